"""``clear-native evaluate``: the paper's quantitative test and further checks.

Every method is evaluated once per back-projection signal (``"response"``: the
paper's class response, the default; ``"logit"``: the gradient of the class logit);
``"cam"`` has no signal and is evaluated once. Each such row gets: the strong-feature
curve (paper Table 1) with the positive focus of the true class; deletion /
insertion AUCs ranking pixels by the response of the predicted class, against a
random order and plain-gradient heatmaps; the CLEAR dominance statistics; the
Adebayo et al. sanity check on a small subset; and the class-sensitivity checks of
:func:`clear_native.metrics.class_sensitivity` (strong-pixel shares and the causal
deletion check on every image, head randomisation on the sanity subset).
Results go to ``OUT/evaluation.json`` and ``OUT/evaluation.md``.

Report structure (``evaluation.json``): ``dataset``, ``split``, ``images``,
``accuracy``, ``signals`` (the signals evaluated), ``default_signals`` (method ->
its default signal, None for cam), ``baselines`` and ``methods``: one row per
(method, signal), keyed ``"<method>/<signal>"`` (``"cam"`` for cam), each a dict
with ``method``, ``signal``, ``default_signal`` (whether ``signal`` is the method's
default), ``strong_features``, ``deletion_auc``, ``insertion_auc``, ``dominance``,
``wrong_region_confusion``, ``sanity_check``, ``class_sensitivity``
(:meth:`ClassSensitivity.as_dict` plus ``head_randomised_images``), ``sanity`` (the
checks beyond the paper, :func:`clear_native.metrics.sanity_report` on at most
``SANITY_DATA_IMAGES`` images: data and model randomisation, grid pointing game, the
prediction's lead, causal effect with its bootstrap interval; :meth:`SanityRow.as_dict`)
and ``sanity_passes`` (:func:`clear_native.metrics.passes` against ``THRESHOLDS``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from clear_native.explain import DEFAULT_SIGNAL, METHODS, SIGNALS, methods as registered_methods
#: Methods without a back-projection signal (evaluated once, whatever ``signals`` is).
SIGNAL_FREE = ("cam",)
#: Images (evenly spaced) and mosaics of the sanity checks beyond the paper (kept small).
SANITY_DATA_IMAGES, SANITY_MOSAICS = 64, 16


def parse_names(value, allowed, what: str) -> tuple[str, ...]:
    """``value`` (comma-separated str or iterable of str) as a tuple of names from ``allowed``.

    Blank entries are dropped and duplicates kept once (first occurrence). Raises
    ValueError naming the unknown entries and the allowed ones, or when nothing is left.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: expected names, got {item!r}")
        item = item.strip()
        if item and item not in names:
            names.append(item)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(map(repr, bad))}; expected one or more of "
                         f"{', '.join(allowed)} (comma-separated)")
    if not names:
        raise ValueError(f"no {what} given; expected one or more of {', '.join(allowed)}")
    return tuple(names)


def row_key(method: str, signal: str | None) -> str:
    """Key of a report row: ``"<method>/<signal>"``, or ``method`` when it has no signal."""
    return method if signal is None else f"{method}/{signal}"


def _rows(methods, signals):
    """(method, signal) pairs: back-projection methods once per signal, cam once."""
    return [(m, None) if m in SIGNAL_FREE else (m, s) for m in methods
            for s in ((None,) if m in SIGNAL_FREE else signals)]


def _explain_batched(explainer, x, y, batch_size):
    """Dominance fields plus the predicted class's map, batch by batch."""
    fields = {"dominant_class": [], "dominant_response": [], "target_response": [],
              "prediction": [], "predicted_response": []}
    for s in range(0, x.shape[0], batch_size):
        m = explainer(x[s:s + batch_size], target=y[s:s + batch_size], keep_class_maps=True)
        fields["dominant_class"].append(m.dominant_class)
        fields["dominant_response"].append(m.dominant_response)
        fields["target_response"].append(m.target_response)
        fields["prediction"].append(m.prediction)
        fields["predicted_response"].append(
            m.class_maps.gather(1, m.prediction.view(-1, 1, 1, 1).expand(-1, 1, *m.class_maps.shape[2:]))
            .squeeze(1))
    return {k: torch.cat(v) for k, v in fields.items()}


def evaluate(dataset: str = "mnist", split: str = "sample", methods=METHODS, limit: int | None = None,
             sanity_images: int = 32, batch_size: int = 256, device: str = "cpu",
             out: str | Path = "clear-eval", signals=SIGNALS) -> dict:
    """Evaluates ``methods`` x ``signals`` (see the module docstring) and writes the report.

    ``methods`` / ``signals``: names (or one comma-separated str) from :data:`METHODS`
    and :data:`clear_native.explain.SIGNALS`; unknown names raise ValueError.
    ``sanity_images``: the first N images used by the sanity check and by the head
    randomisation of the class-sensitivity check (both re-run the explainer).
    """
    from clear_native import metrics
    from clear_native.data import class_names, load_dataset, load_sample
    from clear_native.explain import Clear
    from clear_native.models import load_pretrained

    methods = parse_names(methods, registered_methods(), "method")
    signals = parse_names(signals, SIGNALS, "signal")
    t0 = time.perf_counter()
    model = load_pretrained(dataset, map_location=device)
    data = load_sample(dataset) if split == "sample" else load_dataset(dataset, split)
    x, y = data.tensors()
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x, y = x.to(device), y.to(device)
    num_classes = len(class_names(dataset))
    report = {"dataset": dataset, "split": split, "images": int(x.shape[0]),
              "accuracy": metrics.accuracy(model, x, y), "signals": list(signals),
              "default_signals": {m: DEFAULT_SIGNAL.get(m) for m in methods}, "methods": {}}
    grad_sal = metrics.gradient_saliency(model, x, model(x).argmax(1))
    rand_sal = metrics.random_saliency(grad_sal.shape, device=device)
    pred = model(x).argmax(1).detach()
    baselines = {"random": metrics.deletion_insertion(model, x, pred, rand_sal),
                 "gradient": metrics.deletion_insertion(model, x, pred, grad_sal)}
    report["baselines"] = {k: {"deletion_auc": v.deletion_auc, "insertion_auc": v.insertion_auc}
                           for k, v in baselines.items()}
    xs = x[:sanity_images]
    for method, signal in _rows(methods, signals):
        def explain(m, method=method, signal=signal):
            return Clear(m, method=method, signal=signal)(xs)

        explainer = Clear(model, method=method, signal=signal)
        f = _explain_batched(explainer, x, y, batch_size)
        curve = metrics.strong_feature_accuracy(model, x, y, f["target_response"])
        di = metrics.deletion_insertion(model, x, f["prediction"], f["predicted_response"])
        agree = metrics.dominance_agreement(f["dominant_class"], f["prediction"], y, num_classes,
                                            dominant_response=f["dominant_response"])
        sanity = metrics.sanity_check(model, explain)
        maps = SimpleNamespace(dominant_class=f["dominant_class"],
                               dominant_response=f["dominant_response"], prediction=f["prediction"])
        # Head randomisation: the model's maps of xs are the first rows of f (reused);
        # only the copy with a re-initialised head is explained again.
        base = SimpleNamespace(dominant_class=f["dominant_class"][:xs.shape[0]],
                               dominant_response=f["dominant_response"][:xs.shape[0]])

        def head_explain(m, explain=explain, base=base):
            return base if m is model else explain(m)

        sens = metrics.class_sensitivity(model, x, y, maps,
                                         explain=head_explain if xs.shape[0] else None,
                                         batch_size=batch_size).as_dict()
        sens["head_randomised_images"] = int(xs.shape[0])
        report["methods"][row_key(method, signal)] = {
            "method": method, "signal": signal,
            "default_signal": signal == DEFAULT_SIGNAL.get(method),  # cam: True (it has none)
            "strong_features": {"curve": curve.as_rows(), "closest_to_paper": curve.closest_to_paper()},
            "deletion_auc": di.deletion_auc, "insertion_auc": di.insertion_auc,
            "dominance": {k: v for k, v in agree.items() if k != "share_predicted"
                          and k != "wrong_region_confusion"},
            "wrong_region_confusion": agree["wrong_region_confusion"].tolist(),
            "sanity_check": sanity,
            "class_sensitivity": sens,
            **_sanity(model, x, y, method, signal, sanity_images),
        }
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    (out / "evaluation.md").write_text(to_markdown(report))
    return report


def _sanity(model, x, y, method, signal, sanity_images) -> dict:
    """The ``sanity`` and ``sanity_passes`` entries of a row (module doc)."""
    from clear_native import metrics

    kwargs = {"method": method} if signal is None else {"method": method, "signal": signal}
    row = metrics.sanity_report(model, x, y, kwargs, data_images=SANITY_DATA_IMAGES,
                                model_images=max(1, sanity_images), max_mosaics=SANITY_MOSAICS)
    return {"sanity": row.as_dict(), "sanity_passes": metrics.passes(row)}


def _sanity_md(r: dict) -> list[str]:
    rows = [(k, v) for k, v in r["methods"].items() if "sanity" in v]
    if not rows:
        return []
    s0 = rows[0][1]["sanity"]
    lines = ["", "## Sanity checks beyond the paper", "",
             f"Spearman rho of the dominant response between {s0['data_images']} images, against noise "
             f"and a grey image; after re-initialising the head ({s0['model_images']} images) and the "
             "whole cascade; grid pointing game (share of each quadrant's strong / visible pixels "
             "dominated by its class, chance 25%); share of correct images led by the prediction; "
             "causal effect with its 95% bootstrap interval. `*` marks a value missing its target "
             "(`clear_native.metrics.THRESHOLDS`).", "",
             "| method | rho img-img | rho img-noise | rho img-grey | head rho (prediction's map) | cascade rho | pointing "
             "strong % | visible % | mosaics | prediction leads % | causal effect [95% CI] (regions) | passed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, v in rows:
        s, ok = v["sanity"], v.get("sanity_passes", {})

        def m(key, text):
            return text if ok.get(key, True) else text + "*"
        lines.append(
            f"| {_label(k, v)} | {m('rho_image_image', _f(s['rho_image_image'], '.2f'))} | "
            f"{m('rho_image_noise', _f(s['rho_image_noise'], '.2f'))} | {_f(s['rho_image_constant'], '.2f')} | "
            f"{m('head_predicted_map_rho', _f(s['head_predicted_map_rho'], '.2f'))} | {_f(s['cascade_rho'], '.2f')} | "
            f"{m('pointing_strong', _p(s['pointing_strong']))} | {m('pointing_visible', _p(s['pointing_visible']))} | "
            f"{s['mosaics']} | {m('prediction_leads', _p(s['prediction_leads']))} | "
            f"{m('causal_effect', _f(s['causal_effect']))} [{m('causal_ci_low', _f(s['causal_ci_low']))}, "
            f"{_f(s['causal_ci_high'])}] ({m('causal_regions', str(s['causal_regions']))}) | "
            f"{sum(ok.values())}/{len(ok)} |")
    return lines


def _p(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}"


def _f(v, spec: str = ".3f") -> str:
    return "n/a" if v is None or v != v else format(v, spec)


def _label(key: str, row: dict) -> str:
    """Row label in the tables: the key, marked when its signal is the method's default."""
    return f"{key} (default)" if row.get("default_signal") and row.get("signal") else key


def _defaults_line(r: dict) -> str:
    parts = [f"{m}: {s if s is not None else 'no signal'}"
             for m, s in r.get("default_signals", {}).items()]
    return ("Signals evaluated: " + ", ".join(r.get("signals", [])) + ". Default signal per method: "
            + "; ".join(parts) + ". Rows are `method/signal` (cam has no signal); "
            "\"(default)\" marks each method's default.")


def _class_sensitivity_md(r: dict) -> list[str]:
    rows = [(k, v) for k, v in r["methods"].items() if "class_sensitivity" in v]
    if not rows:
        return []
    t = rows[0][1]["class_sensitivity"]["strong_threshold"]
    n_head = rows[0][1]["class_sensitivity"].get("head_randomised_images")
    lines = ["", f"## Class sensitivity (strong pixels: dominant response >= {t:g} x the image's maximum)", "",
             "Shares are % of an image's strong pixels dominated by a class, averaged over images. "
             "Good maps give the predicted class a share on correct images well above chance and, on "
             "misclassified images, show both the true and the predicted class above chance. The share "
             "alone can be gamed (scale each class map by its logit and the prediction wins every "
             "pixel), so read it with the other two columns: head-randomised agreement is the share of "
             "strong pixels whose dominant class survives re-initialising the class head (lower = the "
             "maps depend on the head; around chance = the class assignment is re-drawn, near 100% = "
             "the maps ignore the model's decision), and the causal effect is how much more deleting the pixels a class "
             "dominates lowers that class's logit (relative to the other logits) than deleting as many "
             "other strong pixels (logit units; > 0 = the assignment is causal, 0 = no better than "
             "chance). Chance share = 1 / number of classes.", "",
             f"| method | signal | predicted share, correct % | true share, wrong % | predicted share, "
             f"wrong % | chance % | head-randomised agreement % ({n_head} images) | causal effect | "
             f"causal pairs / skipped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, v in rows:
        c = v["class_sensitivity"]
        signal = v.get("signal") or "none"
        if v.get("default_signal") and v.get("signal"):
            signal += " (default)"
        lines.append(f"| {v.get('method', k)} | {signal} | {_p(c['share_predicted_correct'])} | "
                     f"{_p(c['share_true_wrong'])} | {_p(c['share_predicted_wrong'])} | {_p(c['chance'])} | "
                     f"{_p(c['head_randomised_agreement'])} | {_f(c['causal_effect'])} | "
                     f"{c['causal_pairs']} / {c['causal_skipped']} |")
    lines += ["", f"Images: {rows[0][1]['class_sensitivity']['images_correct']} correct, "
                  f"{rows[0][1]['class_sensitivity']['images_wrong']} misclassified (shares and causal "
                  f"check on all of them; head randomisation on the first {n_head})."]
    return lines


def to_markdown(r: dict) -> str:
    lines = [f"# CLEAR evaluation: {r['dataset']} ({r['split']}, {r['images']} images)", "",
             f"Model accuracy: {_p(r['accuracy'])}% (paper, MNIST: 99.26%).", ""]
    if "signals" in r:
        lines += [_defaults_line(r), ""]
    lines += ["## Strong features (paper Table 1: full 99.26 / kept 79.89 / removed 43.45)", "",
              "| method | threshold t | full % | only strong kept % | strong removed % | strong share % |",
              "|---|---|---|---|---|---|"]
    for m, v in r["methods"].items():
        b = v["strong_features"]["closest_to_paper"]
        lines.append(f"| {_label(m, v)} | {b['threshold']:.2f} | {_p(b['full'])} | {_p(b['kept'])} | "
                     f"{_p(b['removed'])} | {_p(b['strong_share'])} |")
    lines += ["", "Whole curves (kept % / removed % per threshold):", ""]
    ts = [row["threshold"] for row in next(iter(r["methods"].values()))["strong_features"]["curve"]]
    lines.append("| method | " + " | ".join(f"t={t:.2f}" for t in ts) + " |")
    lines.append("|---|" + "---|" * len(ts))
    for m, v in r["methods"].items():
        lines.append(f"| {_label(m, v)} | " + " | ".join(f"{_p(row['kept'])} / {_p(row['removed'])}"
                                                         for row in v["strong_features"]["curve"]) + " |")
    lines += ["", "## Deletion / insertion (probability of the predicted class; AUC)", "",
              "| ranking | deletion AUC (lower is better) | insertion AUC (higher is better) |",
              "|---|---|---|"]
    for m, v in r["methods"].items():
        lines.append(f"| CLEAR {_label(m, v)} (predicted class's map) | {v['deletion_auc']:.3f} | "
                     f"{v['insertion_auc']:.3f} |")
    for k, v in r["baselines"].items():
        lines.append(f"| {k} | {v['deletion_auc']:.3f} | {v['insertion_auc']:.3f} |")
    lines += ["", "## Dominance", "",
              "| method | share of pixels dominated by the prediction (correct) | (wrong) | wrong images: share dominated by the true class |",
              "|---|---|---|---|"]
    for m, v in r["methods"].items():
        d = v["dominance"]
        lines.append(f"| {_label(m, v)} | {_p(d['share_predicted_correct'])} | {_p(d['share_predicted_wrong'])} | "
                     f"{_p(d['wrong_true_class_share'])} |")
    lines += _class_sensitivity_md(r)
    lines += _sanity_md(r)
    lines += ["", "## Sanity check (cascading randomisation, top layer first)", "",
              "| method | " + " | ".join(row["randomised"] for row in
                                       next(iter(r["methods"].values()))["sanity_check"]) + " |"]
    lines.append("|---|" + "---|" * len(next(iter(r["methods"].values()))["sanity_check"]))
    for m, v in r["methods"].items():
        lines.append(f"| {_label(m, v)} (Spearman / class agreement) | " + " | ".join(
            f"{row['spearman']:.2f} / {row['class_agreement']:.2f}" for row in v["sanity_check"]) + " |")
    lines += ["", f"Took {r['seconds']} s."]
    return "\n".join(lines) + "\n"
