"""The page: ``data/index.js`` (every image's row, the run's summary, the classes; what
the static page reads) and ``index.html`` itself, assembled from the package's
``assets/page.html``, ``page.css`` and ``page.js`` (one file, inline CSS and JavaScript:
it is opened from disk, with no server and no network)."""
from __future__ import annotations

import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from clear_native import palettes as _palettes
from clear_native.io import BatchError
from clear_native.report.data import Inputs, Run

FORMAT = "clear-native-report/1"
PAGE_SIZE = 200
TOP = 3            # dominant classes per image in the index
MAX_ERRORS = 100   # errors listed on the page (all are in OUT/errors.json)


# -- the page's data ----------------------------------------------------------------------

def _permille(v) -> int:
    """A share as an integer 0-1000 (-1: none); compact in the index."""
    return -1 if v is None or v != v else int(round(1000 * float(v)))


def index_rows(run: Run) -> dict:
    """Every image's row, columnar: key, label, pred, valid, share (prediction's share of
    the pixels), strong (its share of the strong pixels), top ([class, share, ...] of the
    ``TOP`` most dominant classes), error ({index: reason} of the skipped images)."""
    rows = run.rows
    if rows["index"] != list(range(run.n)):
        raise BatchError(f"{str(run.out)!r}: the table's rows are not the images 0..{run.n - 1} in order; "
                         f"check the run with `clear-native verify {run.out}`")
    top = []
    for cls, shares in zip(rows["dominant_classes"], rows["dominant_shares"]):
        order = sorted(range(len(cls)), key=lambda k: (-shares[k], cls[k]))[:TOP]
        top.append([v for k in order for v in (int(cls[k]), _permille(shares[k]))])
    return {"key": [str(k) for k in rows["key"]], "label": [int(v) for v in rows["label"]],
            "pred": [int(v) for v in rows["prediction"]], "valid": [int(bool(v)) for v in rows["valid"]],
            "share": [_permille(v) for v in rows["prediction_share"]],
            "strong": [_permille(v) for v in rows["prediction_share_strong"]], "top": top,
            "error": {str(i): e for i, e in enumerate(rows["error"]) if e}}


def per_class(run: Run) -> dict:
    """Per class (columnar, classes that are a label or a prediction): images with that
    label, how many of them are classified correctly, predictions of it, and the
    prediction's mean share of the strong pixels where it is predicted (per mille)."""
    rows = run.rows
    valid = np.asarray(rows["valid"], bool)
    label = np.asarray(rows["label"], np.int64)
    pred = np.asarray(rows["prediction"], np.int64)
    strong = np.asarray([np.nan if v is None else v for v in rows["prediction_share_strong"]], np.float64)
    c = run.num_classes
    lab = valid & (label >= 0) & (label < c)
    images = np.bincount(label[lab], minlength=c)
    correct = np.bincount(label[lab & (label == pred)], minlength=c)
    ok = valid & (pred >= 0) & (pred < c)
    predicted = np.bincount(pred[ok], minlength=c)
    has = ok & ~np.isnan(strong)
    total = np.bincount(pred[has], weights=strong[has], minlength=c)
    count = np.bincount(pred[has], minlength=c)
    keep = np.nonzero((images > 0) | (predicted > 0))[0]
    mean = [_permille(total[k] / count[k]) if count[k] else -1 for k in keep]
    return {"class": keep.tolist(), "images": images[keep].tolist(), "correct": correct[keep].tolist(),
            "predicted": predicted[keep].tolist(), "strong": mean}


def confusions(run: Run, k: int = 12) -> list:
    """The ``k`` most frequent (label, prediction, count) of the misclassified images."""
    pairs: dict = {}
    for v, lab, p in zip(run.rows["valid"], run.rows["label"], run.rows["prediction"]):
        if v and lab >= 0 and lab != p:
            pairs[(lab, p)] = pairs.get((lab, p), 0) + 1
    return [[a, b, n] for (a, b), n in sorted(pairs.items(), key=lambda t: (-t[1], t[0]))[:k]]


def _error_kinds(errors: list) -> list:
    """[reason's first part (the exception type or the check), count], most frequent first."""
    kinds: dict = {}
    for e in errors:
        kind = str(e.get("reason", "")).split(":")[0][:80]
        kinds[kind] = kinds.get(kind, 0) + 1
    return sorted(([k, n] for k, n in kinds.items()), key=lambda t: -t[1])


def summary(run: Run, inputs: Inputs) -> dict:
    """The run's summary for the page: what ran, results, throughput, errors."""
    from clear_native.batch import run_results

    m = run.manifest
    args, model, data = m.get("arguments") or {}, m.get("model") or {}, m.get("data") or {}
    results = m.get("results")
    if not isinstance(results, dict):  # a run from before manifests had results
        rows = [dict(zip(run.rows, vals)) for vals in zip(*run.rows.values())]
        results = run_results(rows, run.num_classes, data.get("kind"))
    t = m.get("timings") or {}
    return {
        "run": {"model": model.get("spec") or "builtin", "model_class": model.get("class"),
                "data": data.get("spec"), "data_kind": data.get("kind"), "labels": data.get("labels"),
                "method": args.get("method"), "signal": args.get("signal"), "classes": args.get("classes"),
                "store": args.get("store"), "preprocess": args.get("preprocess"),
                "num_classes": run.num_classes, "image_shape": (m.get("shapes") or {}).get("image"),
                "map_shape": list(run.map_shape)},
        "counts": m.get("counts", {}) | {"chunks_redone": len((m.get("counts") or {}).get("chunks_redone") or [])},
        "results": results,
        "timings": {k: t.get(k) for k in ("wall_s", "images_per_s", "images_this_invocation", "data_s",
                                          "explain_s", "write_s", "all_chunks", "note")},
        "errors": {"total": len(run.errors), "kinds": _error_kinds(run.errors),
                   "first": run.errors[:MAX_ERRORS]},
        "per_class": per_class(run), "confusions": confusions(run), "inputs": inputs.how,
    }


def _hex(palette: torch.Tensor) -> list[str]:
    return ["#%02x%02x%02x" % tuple(int(v) for v in row) for row in palette.tolist()]


def write_index(run: Run, inputs: Inputs, folder: Path, panels: list[str], *, page_size: int,
                thumb: int, panel: int) -> Path:
    """``data/index.js``: ``window.CLEAR_REPORT = {...}`` (rows, summary, classes, layout)."""
    h, w = run.map_shape

    def fit(side):
        scale = min(1.0, side / max(h, w))
        return [max(1, round(h * scale)), max(1, round(w * scale))]

    names = run.class_names
    payload = {"format": FORMAT, "page_size": page_size, "panels": panels,
               "thumb_shape": fit(thumb), "panel_shape": fit(panel),
               "classes": {"names": [str(x) for x in names] if names else None,
                           "colours": _hex(_palettes.get_palette(run.num_classes))},
               "summary": summary(run, inputs), "rows": index_rows(run)}
    path = folder / "data" / "index.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(payload), separators=(",", ":"), allow_nan=False)
    tmp = path.with_name(".index.js.tmp")
    tmp.write_text(f"window.CLEAR_REPORT = {text};\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _finite(obj):
    """``obj`` with NaN / infinite floats as None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj



# -- the page (static: the data comes from data/index.js) ---------------------------------

@lru_cache(maxsize=1)
def page_html() -> str:
    """``index.html``: ``assets/page.html`` with ``page.css`` and ``page.js`` inlined at
    their markers (the same page whatever the data: it reads ``data/index.js``)."""
    assets = resources.files("clear_native.report") / "assets"
    text = {name: (assets / name).read_text(encoding="utf-8") for name in ("page.html", "page.css", "page.js")}
    return (text["page.html"].replace("/* page.css */\n", text["page.css"], 1)
            .replace("// page.js\n", text["page.js"], 1))
