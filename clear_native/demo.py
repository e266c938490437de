"""The built-in demo: the paper's MNIST figures from the shipped model and sample.

``clear-native demo`` (no arguments) loads the shipped ALL-CNN-like MNIST network
and the shipped sample of MNIST test digits, explains them with the paper's
deconvnet back-projection (every class at once), and writes into ``./clear-demo/``:

- ``correct.png/.pdf`` and ``wrong.png/.pdf``: correctly and wrongly classified
  digits, each row input / positive focus / negative focus / CLEAR map / overlay /
  binary map, with the class legend and per-class shares (paper Fig. 3-5);
- ``grid.png/.pdf``: the whole sample's CLEAR maps, correct vs wrong side by side;
- ``metrics.json``: accuracy, the strong-feature curve (paper Table 1) on the sample,
  the CLEAR dominance statistics, the class-sensitivity checks
  (:func:`clear_native.metrics.class_sensitivity`: strong-pixel shares vs chance,
  head-randomised agreement, causal deletion effect), the back-projection signal
  used, and how the sample was drawn;
- ``index.html``: a page showing the figures with the numbers below.

The shipped sample is not a random draw: it is the first 500 test images plus the
later test images the model misclassifies (see ``clear_native/assets/<name>_sample.json``),
so its accuracy is far below the model's test-set accuracy, which is shown beside it.
"""
from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace


log = logging.getLogger(__name__)


#: Images used by the head randomisation of the class-sensitivity check (it re-runs
#: the explainer twice); the shares and the causal check use the whole sample.
SENSITIVITY_IMAGES = 32


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def sample_info(dataset: str = "mnist") -> dict:
    """How the shipped sample was drawn and the model's accuracy on the full test split.

    From ``assets/<name>_sample.json`` and the weights' training log
    ``weights/<stem>.json`` (keys missing when a file or field is absent): ``rule``,
    ``first``, ``extra_misclassified``, ``size``, ``first_accuracy`` (model accuracy on
    the first ``first`` test images), ``test_accuracy`` and ``test_size`` (full test split).
    """
    from clear_native.data import sample_path
    from clear_native.models import weights_path

    meta = _read_json(sample_path(dataset).with_suffix(".json"))
    log = _read_json(weights_path(dataset).with_suffix(".json"))
    info = {k: meta[k] for k in ("rule", "first", "extra_misclassified", "size") if k in meta}
    if meta.get("first") and "model_correct_on_first" in meta:
        info["first_accuracy"] = meta["model_correct_on_first"] / meta["first"]
    # The training log belongs to the shipped weights; the sample's own record only
    # counts if it was made with the same weights.
    same = "sha256" not in log or meta.get("model_weights_sha256") in (None, log["sha256"])
    if "test_accuracy" in log:
        info["test_accuracy"] = log["test_accuracy"]
        if "test_size" in log:
            info["test_size"] = log["test_size"]
    elif same and "model_test_accuracy" in meta:
        info["test_accuracy"] = meta["model_test_accuracy"]
    return info


def sample_note(s: dict) -> str:
    """One sentence: the sample is enriched with misclassified digits (plain text)."""
    info = s.get("sample") or {}
    extra = info.get("extra_misclassified")
    note = ("sample enriched with misclassified test images"
            + (f" (first {info['first']} test images + {extra} later misclassified ones)"
               if extra is not None and "first" in info else "")
            + ", so its accuracy is not the test-set accuracy")
    if "test_accuracy" in info:
        size = f" ({info['test_size']} images)" if "test_size" in info else ""
        note += f"; full test set{size}: {_pct(info['test_accuracy'])}"
    if "first_accuracy" in info:
        note += f"; first {info['first']} test images: {_pct(info['first_accuracy'])}"
    return note


def run_demo(out: str | Path = "clear-demo", *, method: str | None = None, dataset: str = "mnist",
             rows: int = 6, device: str = "cpu", signal: str | None = None,
             sensitivity_images: int = SENSITIVITY_IMAGES) -> dict:
    """Runs the demo and returns a summary dict (paths and numbers).

    ``method``: None for :data:`clear_native.explain.DEFAULT_METHOD`. ``signal``: the
    back-projection signal (None: the method's default; must be None for cam). ``sensitivity_images``:
    the first N images used for the head randomisation of the class-sensitivity check.
    """
    from clear_native import metrics, plot
    from clear_native.data import class_names, load_sample
    from clear_native.explain import DEFAULT_METHOD, Clear
    from clear_native.models import load_pretrained

    method = DEFAULT_METHOD if method is None else method

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_pretrained(dataset, map_location=device)
    sample = load_sample(dataset)
    x, y = sample.tensors()
    x, y = x.to(device), y.to(device)
    names = class_names(dataset)

    # Positive focus = the TRUE class, so a misread digit shows where the evidence
    # for its true class is and which class beat it there.
    maps = Clear(model, method=method, signal=signal)(x, target=y)
    pred = maps.prediction
    correct = (pred == y).nonzero().flatten().tolist()
    wrong = (pred != y).nonzero().flatten().tolist()
    images = x.cpu()
    files = {}
    common = dict(labels=y.cpu(), predictions=pred.cpu(), class_names=names, num_classes=len(names))
    if correct:
        plot.figure(maps.cpu(), images, indices=correct[:rows], path=out / "correct", **common)
        files["correct"] = "correct.png"
    if wrong:
        plot.figure(maps.cpu(), images, indices=wrong[:rows], path=out / "wrong", **common)
        files["wrong"] = "wrong.png"
    plot.grid(maps.cpu(), images, path=out / "grid", **common)
    files["grid"] = "grid.png"

    curve = metrics.strong_feature_accuracy(model, x, y, maps.target_response)
    agree = metrics.dominance_agreement(maps.dominant_class, pred, y, len(names),
                                        dominant_response=maps.dominant_response)
    xs = x[:sensitivity_images]
    # The head randomisation explains xs with the model (reusing the maps already
    # computed) and with a copy whose class head is re-initialised (computed).
    base = SimpleNamespace(dominant_class=maps.dominant_class[:xs.shape[0]],
                           dominant_response=maps.dominant_response[:xs.shape[0]])

    def explain(m):
        return base if m is model else Clear(m, method=method, signal=signal)(xs)

    sens = metrics.class_sensitivity(model, x, y, maps,
                                     explain=explain if xs.shape[0] else None).as_dict()
    sens["head_randomised_images"] = int(xs.shape[0])
    summary = {
        "dataset": dataset, "method": method, "signal": maps.signal, "images": len(sample),
        "accuracy": float((pred == y).float().mean()),
        "num_correct": len(correct), "num_wrong": len(wrong),
        "sample": sample_info(dataset),
        "strong_features": {"curve": curve.as_rows(), "full": curve.full,
                            "closest_to_paper": curve.closest_to_paper(), "paper": curve.paper},
        "dominance": {k: v for k, v in agree.items()
                      if k not in ("share_predicted", "wrong_region_confusion")},
        "class_sensitivity": sens,
        "seconds": round(time.perf_counter() - t0, 2),
        "files": files,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "index.html").write_text(_html(summary))
    summary["out"] = str(out.resolve())
    return summary


def _pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:+.3f}"


def _sensitivity_html(s: dict) -> str:
    c = s.get("class_sensitivity")
    if not c:
        return ""
    t = c["strong_threshold"]
    return f"""<h3>Class sensitivity</h3>
<p>Does the dominant class follow the model's evidence? Strong pixels = pixels whose dominant
response is at least {t:g} times the image's largest one.</p>
<table>
<tr><td>predicted class's share of the strong pixels, correct images</td><td>{_pct(c['share_predicted_correct'])}</td>
<td style="text-align:left">chance (1 / classes): {_pct(c['chance'])}; well above chance = the map shows the
prediction's evidence (on its own this can be gamed, hence the two checks below)</td></tr>
<tr><td>misclassified images: true / predicted class's share</td>
<td>{_pct(c['share_true_wrong'])} / {_pct(c['share_predicted_wrong'])}</td>
<td style="text-align:left">both above chance = the map shows the evidence for the true class and what beat it</td></tr>
<tr><td>head-randomised agreement ({c.get('head_randomised_images', 'n/a')} images)</td>
<td>{_pct(c['head_randomised_agreement'])}</td>
<td style="text-align:left">share of strong pixels keeping their class after re-initialising the class head
({html.escape(str(c.get('head_randomised_module')))}); lower = the maps depend on the model's decision, near 100% = they ignore it</td></tr>
<tr><td>causal effect (logits)</td><td>{_num(c['causal_effect'])}</td>
<td style="text-align:left">how much more deleting a class's pixels lowers that class's logit (relative to the others)
than deleting as many other strong pixels; &gt; 0 = causal ({c['causal_pairs']} image/class pairs,
{c['causal_skipped']} skipped)</td></tr>
</table>
"""


def _html(s: dict) -> str:
    e = html.escape
    best = s["strong_features"]["closest_to_paper"]
    paper = s["strong_features"]["paper"]
    rows = "".join(
        f"<tr><td>{r['threshold']:.2f}</td><td>{_pct(r['kept'])}</td><td>{_pct(r['removed'])}</td>"
        f"<td>{_pct(r['strong_share'])}</td></tr>" for r in s["strong_features"]["curve"])
    figs = "".join(
        f"<h2>{e(title)}</h2><img src='{e(s['files'][key])}' alt='{e(title)}'>"
        for key, title in (("correct", "Correctly classified"), ("wrong", "Wrongly classified"),
                           ("grid", "The whole sample")) if key in s["files"])
    d = s["dominance"]
    signal = s.get("signal")
    title = f"{s['method']}, {signal} signal" if signal else s["method"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CLEAR maps: {e(s['dataset'])} demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #bbb;padding:2px 8px;text-align:right}}</style>
</head><body>
<h1>CLEAR maps of the built-in {e(s['dataset'])} model ({e(title)})</h1>
<p>{s['images']} sample images, accuracy {_pct(s['accuracy'])} ({s['num_wrong']} misclassified):
{e(sample_note(s))}.
Colour = dominant class, brightness = its response; positive focus = the true class's map,
negative focus = the best other class; binary map: red where the true class wins, blue where
another class does.</p>
{figs}
<h2>Numbers</h2>
<h3>Strong features (paper Table 1), on this sample</h3>
<p>Strong = pixels whose positive-focus response is at least t times the image's maximum;
removed pixels are set to the background (0).</p>
<table><tr><th></th><th>this run</th><th>paper</th></tr>
<tr><td>full image</td><td>{_pct(best['full'])}</td><td>{paper['full']}%</td></tr>
<tr><td>only strong features kept (t = {best['threshold']:.2f})</td><td>{_pct(best['kept'])}</td><td>{paper['kept']}%</td></tr>
<tr><td>strong features removed (t = {best['threshold']:.2f})</td><td>{_pct(best['removed'])}</td><td>{paper['removed']}%</td></tr></table>
<p>The whole curve:</p>
<table><tr><th>t</th><th>kept</th><th>removed</th><th>strong share</th></tr>{rows}</table>
<h3>Dominance</h3>
<table>
<tr><td>share of pixels dominated by the predicted class, correct images</td><td>{_pct(d['share_predicted_correct'])}</td></tr>
<tr><td>same, misclassified images</td><td>{_pct(d['share_predicted_wrong'])}</td></tr>
<tr><td>misclassified images: share dominated by the true class</td><td>{_pct(d['wrong_true_class_share'])}</td></tr>
</table>
{_sensitivity_html(s)}<p>Made in {s['seconds']} s.</p>
</body></html>
"""
