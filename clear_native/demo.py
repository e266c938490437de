"""The built-in demo: the paper's MNIST figures from the shipped model and sample.

``clear-native demo`` (no arguments) loads the shipped ALL-CNN-like MNIST network
and the shipped sample of MNIST test digits, explains them with the paper's
deconvnet back-projection (every class at once), and writes into ``./clear-demo/``:

- ``correct.png/.pdf`` and ``wrong.png/.pdf``: correctly and wrongly classified
  digits, each row input / positive focus / negative focus / CLEAR map / overlay /
  binary map, with the class legend and per-class shares (paper Fig. 3-5);
- ``grid.png/.pdf``: the whole sample's CLEAR maps, correct vs wrong side by side;
- ``metrics.json``: accuracy, the strong-feature curve (paper Table 1) on the sample,
  and the CLEAR dominance statistics;
- ``index.html``: a page showing the figures with the numbers below.
"""
from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def run_demo(out: str | Path = "clear-demo", *, method: str = "deconvnet", dataset: str = "mnist",
             rows: int = 6, device: str = "cpu") -> dict:
    """Runs the demo and returns a summary dict (paths and numbers)."""
    from clear_native import metrics, plot
    from clear_native.data import class_names, load_sample
    from clear_native.explain import Clear
    from clear_native.models import load_pretrained

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
    maps = Clear(model, method=method)(x, target=y)
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
    summary = {
        "dataset": dataset, "method": method, "images": len(sample),
        "accuracy": float((pred == y).float().mean()),
        "num_correct": len(correct), "num_wrong": len(wrong),
        "strong_features": {"curve": curve.as_rows(), "full": curve.full,
                            "closest_to_paper": curve.closest_to_paper(), "paper": curve.paper},
        "dominance": {k: v for k, v in agree.items()
                      if k not in ("share_predicted", "wrong_region_confusion")},
        "seconds": round(time.perf_counter() - t0, 2),
        "files": files,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "index.html").write_text(_html(summary))
    summary["out"] = str(out.resolve())
    return summary


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.2f}%"


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
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CLEAR maps: {e(s['dataset'])} demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #bbb;padding:2px 8px;text-align:right}}</style>
</head><body>
<h1>CLEAR maps of the built-in {e(s['dataset'])} model ({e(s['method'])})</h1>
<p>{s['images']} sample images, accuracy {_pct(s['accuracy'])} ({s['num_wrong']} misclassified).
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
<p>Made in {s['seconds']} s.</p>
</body></html>
"""
