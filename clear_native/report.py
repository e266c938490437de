"""A static results page over a finished batch run, and the notebook views of CLEAR maps.

``clear-native report OUT`` (:func:`build_report`) writes ``OUT/report/``:

``index.html``  the page: inline CSS and JavaScript, no server, no network (open it from
    disk). A summary of the run (accuracy, class sensitivity, throughput, errors, one row
    per class), then a grid of CLEAR overlays with label, prediction and the top dominant
    classes, filtered (misclassified / correct / skipped, by class, by how much the
    prediction dominates), sorted and paged (``--page-size``, 200 by default); clicking an
    image opens its view: input, positive / negative focus, CLEAR map, overlay, binary
    map and the class legend. The state (filters, sort, page, open image) lives in the
    address's ``#`` part, so a view can be bookmarked and the browser's back button works.
``data/index.js``  every image's row, columnar (one array per field; shares in per
    mille), the summary and the class names and colours, loaded once by the page with a
    ``<script>`` tag (``file://`` pages cannot ``fetch``). Filtering and sorting 100,000
    rows take milliseconds; only the 200 thumbnails of the page shown are requested, with
    ``loading="lazy"``.
``thumbs/NNNN/IIIIIII.png``  the CLEAR overlay of image ``IIIIIII`` (folder ``NNNN`` =
    index // 1000), at most ``--thumb`` pixels a side (smaller maps keep their size and
    are enlarged by the browser, pixelated).
``detail/NNNN/IIIIIII.png``  the image's views side by side in one strip (one request per
    opened image), each at most ``--panel`` pixels a side.
``report.json``  what the pictures were drawn from (the run's identity, the inputs, the
    sizes). A rerun draws only the pictures that are missing; when ``report.json``
    differs (another run under OUT, other sizes or inputs) or with ``--force``, all.

What the pictures are drawn over (the first that applies; the page says which):

1. the run's ``input`` array (``clear-native explain --store input``): the model's own
   input, exact for any preprocess and any data set;
2. DATA read again through the manifest (an image folder, ``.npz`` / ``.npy``, the built-in
   sample), if it is still there with the fingerprint the run recorded; with
   ``--preprocess imagenet`` through that transform's resize and crop; otherwise, when an
   image's size differs from the maps', resized to them (an approximation: a model's own
   preprocess may crop);
3. nothing: the maps on black, as in the paper (a ``module:function`` data set is not
   called again).

The positive / negative focus and binary views need the run's ``--store focus``; without
it the strip holds the input, the CLEAR map and the overlay.

Notebooks: :func:`maps_png` / :func:`maps_html` (``ClearMaps._repr_png_`` /
``_repr_html_`` and ``Dominance``'s) draw the first few images' CLEAR maps with the class
legend; :func:`maps_xarray` (``ClearMaps.to_xarray()``) gives the maps as an
``xarray.Dataset``.
"""
from __future__ import annotations

import base64
import html
import io as _io
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from clear_native import palettes as _palettes
from clear_native.io import BatchError

logger = logging.getLogger(__name__)

FORMAT = "clear-native-report/1"
PAGE_SIZE = 200
THUMB = 128        # longest side of a thumbnail, pixels
PANEL = 256        # longest side of a detail panel, pixels
TOP = 3            # dominant classes per image in the index
MAX_ERRORS = 100   # errors listed on the page (all are in OUT/errors.json)
NOTEBOOK_IMAGES = 8


# -- the run ------------------------------------------------------------------------------

@dataclass
class Run:
    """What a finished batch run holds (read only)."""

    out: Path
    manifest: dict
    rows: dict            # column name -> list (the per-image table)
    arrays: dict          # name -> zarr array
    num_classes: int
    class_names: list | None
    map_shape: tuple
    errors: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows["index"])

    def has(self, *names: str) -> bool:
        return all(name in self.arrays for name in names)


def load_run(out: str | Path) -> Run:
    """A finished run under ``out`` (:class:`BatchError` for anything else)."""
    out = Path(out)
    manifest = _json(out / "manifest.json")
    if not isinstance(manifest, dict) or "shapes" not in manifest:
        what = "no manifest.json" if not (out / "manifest.json").exists() else "an unreadable manifest.json"
        raise BatchError(f"{str(out)!r} holds {what}: not a finished clear-native explain run (a run "
                         "writes it last; rerun the explain command to finish it)")
    try:
        import zarr

        group = zarr.open_group(str(out / "clear.zarr"), mode="r")
        arrays = {name: group[name] for name in group.array_keys()}
    except Exception as e:  # noqa: BLE001
        raise BatchError(f"{str(out)!r}: cannot open clear.zarr ({type(e).__name__}: {e}); "
                         f"check it with `clear-native verify {out}`") from e
    if "dominant_class" not in arrays or "dominant_response" not in arrays:
        raise BatchError(f"{str(out)!r}: the run stored no dominant_class / dominant_response maps "
                         "(explain --store dominant,response): nothing to draw")
    shapes = manifest["shapes"]
    data = manifest.get("data") or {}
    errors = _json(out / "errors.json")
    return Run(out, manifest, _read_table(out), arrays, int(shapes["num_classes"]),
               data.get("class_names"), tuple(shapes["maps"]), errors if isinstance(errors, list) else [])


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_COLUMNS = ("index", "key", "label", "prediction", "valid", "prediction_share", "top_dominant", "agrees",
            "strong_share", "prediction_share_strong", "dominant_classes", "dominant_shares", "error")


def _read_table(out: Path) -> dict:
    """The per-image table as columns (Parquet or CSV, whichever the run wrote)."""
    if (out / "table.parquet").is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(out / "table.parquet", columns=list(_COLUMNS))
        return {c: table.column(c).to_pylist() for c in _COLUMNS}
    if not (out / "table.csv").is_file():
        raise BatchError(f"{str(out)!r} has no table.parquet or table.csv: not a finished run")
    import csv

    cols = {c: [] for c in _COLUMNS}
    with open(out / "table.csv", newline="") as f:
        for r in csv.DictReader(f):
            for c in _COLUMNS:
                cols[c].append(_csv_value(c, r.get(c, "")))
    return cols


def _csv_value(column: str, text: str):
    if column in ("dominant_classes", "dominant_shares"):
        return json.loads(text) if text else []
    if column in ("valid", "agrees"):
        return text == "True"
    if column in ("key", "error"):
        return text or None
    if text == "":
        return None
    return float(text) if column in ("prediction_share", "strong_share", "prediction_share_strong") else int(text)


# -- inputs -------------------------------------------------------------------------------

class Inputs:
    """The pictures under the maps: ``read(start, stop)`` -> uint8 ``(n, ch, H, W)`` at the
    maps' size, or None; ``how`` says where they come from (shown on the page)."""

    def __init__(self, run: Run):
        self.run, self.source, self.geometry = run, None, None
        self.kind, self.how = "none", "the maps on black (no input stored, DATA not readable again)"
        if "input" in run.arrays:
            self.kind, self.how = "stored", "the model's input, stored by the run (--store input)"
            return
        self._from_data(run.manifest)

    def _from_data(self, manifest: dict) -> None:
        from clear_native.io import ImagenetPreprocess, load_data

        data, args = manifest.get("data") or {}, manifest.get("arguments") or {}
        if data.get("kind") not in ("folder", "npz", "npy", "builtin"):
            self.how = (f"the maps on black: DATA ({data.get('kind')}) is not read again by the report; "
                        "run explain with --store input to show the inputs")
            return
        try:
            source = load_data(None if data["kind"] == "builtin" else data["spec"],
                               max_pixels=args.get("max_pixels") or None,
                               hash_contents=bool(args.get("hash_data")))
        except BatchError as e:
            self.how = f"the maps on black: DATA cannot be read again ({e})"
            return
        if source.fingerprint != data.get("fingerprint") or len(source) != self.run.n:
            self.how = "the maps on black: DATA has changed since the run (its fingerprint differs)"
            return
        self.source, self.kind = source, "data"
        self.how = f"DATA read again ({data['spec']})"
        if args.get("preprocess") == "imagenet":
            self.geometry = ImagenetPreprocess(normalize=False)
            self.how += ", through --preprocess imagenet's resize and centre crop"
        elif args.get("preprocess") is not None or (manifest.get("model") or {}).get("kind") == "factory":
            self.how += ("; where an image's size differs from the maps', resized to them (the preprocess's "
                         "geometry is not known: run explain with --store input for the exact input)")

    def read(self, start: int, stop: int, valid: np.ndarray) -> np.ndarray | None:
        if self.kind == "stored":
            return np.asarray(self.run.arrays["input"][start:stop])
        if self.kind != "data":
            return None
        h, w = self.run.map_shape
        with ThreadPoolExecutor(max_workers=_threads()) as pool:
            pics = list(pool.map(self._one, range(start, stop), valid))
        chans = max((p.shape[0] for p in pics if p is not None), default=1)
        out = np.zeros((stop - start, chans, h, w), np.uint8)
        for k, p in enumerate(pics):
            if p is not None:
                out[k] = p if p.shape[0] == chans else np.broadcast_to(p[:1], (chans, h, w))
        return out

    def _one(self, i: int, valid: bool) -> np.ndarray | None:
        """Image ``i`` as uint8 (ch, H, W) at the maps' size; None when unreadable."""
        import torch.nn.functional as F

        from clear_native.batch import input_pictures
        from clear_native.io import to_chw_float

        if not valid:
            return None
        try:
            img, _ = self.source.reader.read(i)
            t = self.geometry(img) if self.geometry is not None else to_chw_float(img)
        except Exception:  # noqa: BLE001 - it was read by the run; a failure now draws no input
            return None
        t = t[:3] if t.shape[0] >= 3 else t[:1]
        if tuple(t.shape[1:]) != tuple(self.run.map_shape):
            t = F.interpolate(t[None].float(), size=self.run.map_shape, mode="bilinear",
                              align_corners=False, antialias=True)[0]
        return input_pictures(t[None])[0]


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# -- pictures -----------------------------------------------------------------------------

def _maps(run: Run, start: int, stop: int) -> SimpleNamespace:
    """Rows ``start:stop`` of the stored maps as tensors (what the renderers take)."""
    def get(name, cls=False):
        if name not in run.arrays:
            return None
        a = np.asarray(run.arrays[name][start:stop])
        return torch.from_numpy(a.astype(np.int64) if cls else a.astype(np.float32))

    return SimpleNamespace(dominant_class=get("dominant_class", True), dominant_response=get("dominant_response"),
                           target_response=get("target_response"), rival_response=get("rival_response"),
                           num_classes=run.num_classes)


def panel_names(run: Run, inputs: Inputs) -> list[str]:
    """The views of an image's strip, in order."""
    names = ["input"] if inputs.kind != "none" else []
    focus = run.has("target_response", "rival_response")
    names += ["positive focus", "negative focus"] if focus else []
    names += ["CLEAR map"] + (["CLEAR overlay"] if inputs.kind != "none" else [])
    names += ["for (red) / against (blue)"] if focus else []
    return names


def _views(maps, images: np.ndarray | None, palette: torch.Tensor, names: list[str]):
    """(thumbnail pictures (n, H, W, 3), strip panels [(n, H, W, 3)] in ``names`` order)."""
    from clear_native.render import render, render_binary, render_focus

    img = None if images is None else torch.from_numpy(images)
    clear = render(maps, palette=palette).numpy()
    overlay = render(maps, img, palette=palette).numpy() if img is not None else clear
    made = {"CLEAR map": clear, "CLEAR overlay": overlay}
    if img is not None:
        made["input"] = (img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img[:, :3]).permute(0, 2, 3, 1).numpy()
    if "positive focus" in names:
        made["positive focus"] = render_focus(maps, "positive").numpy()
        made["negative focus"] = render_focus(maps, "negative").numpy()
        made["for (red) / against (blue)"] = render_binary(maps).numpy()
    return overlay, [made[name] for name in names]


def _fit(picture: np.ndarray, side: int) -> np.ndarray:
    """``picture`` (H, W, 3) shrunk to at most ``side`` pixels a side (bilinear)."""
    h, w = picture.shape[:2]
    if max(h, w) <= side:
        return picture
    from PIL import Image

    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(picture)).resize(size, Image.BILINEAR))


def _save(picture: np.ndarray, path: Path) -> None:
    """A PNG written whole or not at all (a temporary file renamed): a killed report leaves
    no half picture that a rerun would keep. zlib level 1: 3x faster than the default, about
    10% larger on these pictures."""
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(picture)).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def picture_path(kind: str, i: int) -> str:
    """``thumbs/NNNN/IIIIIII.png`` (kind "thumbs" or "detail"), relative to the report."""
    return f"{kind}/{i // 1000:04d}/{i:07d}.png"


def _existing(folder: Path) -> set[str]:
    """Every ``kind/NNNN/IIIIIII.png`` under the report folder."""
    found = set()
    for kind in ("thumbs", "detail"):
        root = folder / kind
        if root.is_dir():
            for sub in os.scandir(root):
                if sub.is_dir():
                    found.update(f"{kind}/{sub.name}/{e.name}" for e in os.scandir(sub.path)
                                 if e.name.endswith(".png") and not e.name.startswith("."))
    return found


def write_pictures(run: Run, inputs: Inputs, folder: Path, *, thumb: int = THUMB, panel: int = PANEL,
                   progress: bool = False) -> dict:
    """Draws the thumbnails and strips that are missing under ``folder``; returns counts."""
    names = panel_names(run, inputs)
    palette = _palettes.get_palette(run.num_classes)
    valid = np.asarray(run.rows["valid"], bool)
    have = _existing(folder)
    todo = [i for i in range(run.n) if valid[i] and not (picture_path("thumbs", i) in have
                                                          and picture_path("detail", i) in have)]
    step = max(1, 256 // max(1, run.arrays["dominant_class"].chunks[0])) * run.arrays["dominant_class"].chunks[0]
    batches = sorted({i // step for i in todo})
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="img", desc="report pictures", disable=not progress)
    todo_set = set(todo)
    with ThreadPoolExecutor(max_workers=_threads()) as pool:
        for b in batches:
            start, stop = b * step, min(run.n, (b + 1) * step)
            wanted = [i for i in range(start, stop) if i in todo_set]
            maps = _maps(run, start, stop)
            images = inputs.read(start, stop, valid[start:stop])
            over, panels = _views(maps, images, palette, names)
            jobs = [pool.submit(_write_one, folder, i, over[i - start], [p[i - start] for p in panels],
                                thumb, panel) for i in wanted]
            for j in jobs:
                j.result()
            bar.update(len(wanted))
    bar.close()
    return {"drawn": len(todo), "kept": int(valid.sum()) - len(todo), "panels": names}


def _write_one(folder: Path, i: int, overlay: np.ndarray, panels: list, thumb: int, panel: int) -> None:
    for kind in ("thumbs", "detail"):
        sub = (folder / picture_path(kind, i)).parent
        if not sub.is_dir():
            sub.mkdir(parents=True, exist_ok=True)
    _save(_fit(overlay, thumb), folder / picture_path("thumbs", i))
    _save(np.concatenate([_fit(p, panel) for p in panels], axis=1), folder / picture_path("detail", i))


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


# -- the report ---------------------------------------------------------------------------

@dataclass
class ReportSummary:
    path: Path            # OUT/report/index.html
    images: int
    drawn: int            # pictures drawn now
    kept: int             # pictures kept from an earlier report
    seconds: float
    inputs: str           # what the maps are drawn over


def build_report(out: str | Path, *, page_size: int = PAGE_SIZE, thumb: int = THUMB, panel: int = PANEL,
                 force: bool = False, progress: bool = False) -> ReportSummary:
    """Writes ``OUT/report/`` (see the module's docstring) for the finished run under ``out``.

    Pictures already drawn by an earlier report of the same run with the same sizes and
    inputs are kept (``force``: all are drawn again). Raises :class:`BatchError` for an
    unfinished run, bad sizes or an unwritable folder.
    """
    t0 = time.perf_counter()
    for name, value, low in (("--page-size", page_size, 1), ("--thumb", thumb, 16), ("--panel", panel, 16)):
        if value < low:
            raise BatchError(f"{name} must be >= {low}, got {value}")
    run = load_run(out)
    inputs = Inputs(run)
    folder = Path(out) / "report"
    panels = panel_names(run, inputs)
    stamp = {"format": FORMAT, "identity": run.manifest.get("identity"), "inputs": inputs.kind,
             "thumb": thumb, "panel": panel, "panels": panels}
    try:
        folder.mkdir(exist_ok=True)
        if force or _json(folder / "report.json") != stamp:
            for kind in ("thumbs", "detail"):  # pictures of another run, size or input: drawn again
                shutil.rmtree(folder / kind, ignore_errors=True)
        (folder / "report.json").write_text(json.dumps(stamp, indent=1, sort_keys=True))
        pics = write_pictures(run, inputs, folder, thumb=thumb, panel=panel, progress=progress)
        write_index(run, inputs, folder, panels, page_size=page_size, thumb=thumb, panel=panel)
        (folder / "index.html").write_text(PAGE, encoding="utf-8")
    except OSError as e:
        raise BatchError(f"cannot write the report under {str(folder)!r}: {e}") from e
    return ReportSummary(folder / "index.html", run.n, pics["drawn"], pics["kept"],
                         time.perf_counter() - t0, inputs.how)


def add_arguments(p) -> None:
    """The ``report`` subcommand's options."""
    p.add_argument("out", metavar="OUT", help="the --out folder of a finished clear-native explain run")
    p.add_argument("--page-size", type=int, default=PAGE_SIZE, help=f"images per page ({PAGE_SIZE})")
    p.add_argument("--thumb", type=int, default=THUMB,
                   help=f"longest side of a thumbnail in pixels ({THUMB}; smaller maps keep their size)")
    p.add_argument("--panel", type=int, default=PANEL,
                   help=f"longest side of each view of an image's page in pixels ({PANEL})")
    p.add_argument("--force", action="store_true", help="draw every picture again (default: only the missing)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def main(args) -> int:
    """Runs the ``report`` subcommand: 0 written, 2 not a finished run / bad arguments."""
    try:
        s = build_report(args.out, page_size=args.page_size, thumb=args.thumb, panel=args.panel,
                         force=args.force, progress=args.progress)
    except BatchError as e:
        print(f"clear-native report: error: {e}", file=sys.stderr)
        return 2
    print(f"clear-native report: {s.images} images; pictures: {s.drawn} drawn, {s.kept} kept from an "
          f"earlier report ({s.seconds:.1f} s); under the maps: {s.inputs}")
    print(f"open {s.path.resolve().as_uri()} in a browser (no server needed)")
    return 0


# -- the page (static: the data comes from data/index.js) ---------------------------------

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CLEAR results</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#f6f6f7}
header,section,nav,.pager,main{padding:0 16px}
header h1{font-size:20px;margin:12px 0 2px}
#run{color:#555;font-size:13px}
#summary{margin:8px 0}
.facts{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.fact{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:140px}
.fact b{display:block;font-size:18px}
.fact span{color:#555;font-size:12px}
.note{color:#555;font-size:12px;max-width:1100px}
details{margin:6px 0}
summary{cursor:pointer;font-weight:600}
table{border-collapse:collapse;font-size:12px;background:#fff}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
nav{position:sticky;top:0;z-index:2;background:#e9e9ec;border-top:1px solid #ccc;border-bottom:1px solid #ccc;
 padding-top:6px;padding-bottom:6px;display:flex;flex-wrap:wrap;gap:12px;align-items:center}
nav label{font-size:13px}
nav input[type=number]{width:56px}
#count{font-weight:600}
.pager{margin:8px 0;display:flex;flex-wrap:wrap;gap:4px;align-items:center}
.pager a,.pager span{padding:2px 8px;border:1px solid #ccc;border-radius:4px;background:#fff;text-decoration:none;color:#1d1d1f}
.pager span.cur{background:#1d1d1f;color:#fff}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.item{display:block;background:#fff;border:2px solid #ddd;border-radius:6px;padding:6px;text-decoration:none;color:inherit}
.item.ok{border-color:#3a9a3a}.item.bad{border-color:#d03030}.item.skipped{border-color:#999;background:#eee}
.item img,.noimg{display:block;width:100%;height:auto;aspect-ratio:var(--aspect);image-rendering:pixelated;background:#000}
.noimg{color:#fff;font-size:12px;display:flex;align-items:center;justify-content:center}
.cap{font-size:12px;margin-top:4px;overflow:hidden}
.key{color:#555;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.bad .pred{color:#d03030;font-weight:600}.ok .pred{color:#2a7a2a}
.chips{display:flex;flex-wrap:wrap;gap:3px;margin-top:3px}
.chip{display:inline-flex;align-items:center;gap:3px;font-size:11px;background:#f1f1f3;border-radius:3px;padding:0 4px}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;border:1px solid #0003}
#detail{position:fixed;inset:0;z-index:5;background:#f6f6f7;overflow:auto;padding:12px 20px}
#detail[hidden]{display:none}
#detail h2{font-size:18px;margin:4px 0}
.dnav{display:flex;gap:10px;margin:6px 0}
.dnav a{padding:2px 10px;border:1px solid #ccc;border-radius:4px;background:#fff;text-decoration:none;color:#1d1d1f}
.panels{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.panels figure{margin:0;text-align:center;font-size:12px}
.panel{background-repeat:no-repeat;image-rendering:pixelated;background-color:#000;border:1px solid #ccc}
.legend{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}
.legend .chip{font-size:13px;padding:2px 6px;background:#fff;border:1px solid #ddd}
.err{color:#b00}
</style>
</head>
<body>
<header><h1>CLEAR results</h1><div id="run"></div></header>
<section id="summary"></section>
<nav id="controls">
 <label>show <select id="show">
  <option value="all">all images</option><option value="wrong">misclassified</option>
  <option value="correct">correctly classified</option><option value="skipped">skipped (errors)</option>
  <option value="nolabel">without a label</option></select></label>
 <label>class <select id="cls"><option value="">any</option></select></label>
 <label>as <select id="by"><option value="either">label or prediction</option><option value="label">label</option>
  <option value="pred">prediction</option><option value="top">most dominant class</option></select></label>
 <label title="the prediction's share of the strong pixels (dominant response at least 0.1 x the image's largest)">
  prediction dominates <input id="dmin" type="number" min="0" max="100" placeholder="0"> to
  <input id="dmax" type="number" min="0" max="100" placeholder="100"> % of the strong pixels</label>
 <label>sort <select id="sort">
  <option value="index">data set order</option>
  <option value="strong_asc">prediction dominates least first</option>
  <option value="strong_desc">prediction dominates most first</option>
  <option value="share_asc">prediction's share of all pixels, lowest first</option>
  <option value="share_desc">prediction's share of all pixels, highest first</option>
  <option value="key">name</option></select></label>
 <span id="count"></span>
</nav>
<div id="pager-top" class="pager"></div>
<main id="grid"></main>
<div id="pager-bottom" class="pager"></div>
<div id="detail" hidden></div>
<script src="data/index.js"></script>
<script>
(function () {
"use strict";
const R = window.CLEAR_REPORT;
const $ = (id) => document.getElementById(id);
if (!R) { $("grid").textContent = "data/index.js did not load: run clear-native report OUT again."; return; }
const rows = R.rows, N = rows.key.length, S = R.summary, names = R.classes.names, colours = R.classes.colours;
const DEFAULTS = {show: "all", cls: "", by: "either", dmin: "", dmax: "", sort: "index", p: "1", img: ""};

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
const cname = (c) => c < 0 ? "none" : (names && c < names.length ? names[c] : String(c));
const cfull = (c) => cname(c) + (names && c >= 0 && c < names.length ? " (" + c + ")" : "");
const pm = (v) => v < 0 ? "n/a" : (v / 10).toFixed(1) + "%";
const pct = (v) => v === null || v === undefined ? "n/a" : (100 * v).toFixed(2) + "%";
const pic = (kind, i) => kind + "/" + String(Math.floor(i / 1000)).padStart(4, "0") + "/" + String(i).padStart(7, "0") + ".png";
const swatch = (c) => el("span", {class: "sw", style: "background:" + (c >= 0 && c < colours.length ? colours[c] : "#888")});
const chip = (c, share) => el("span", {class: "chip", title: "class " + c}, swatch(c), cname(c) + (share === undefined ? "" : " " + pm(share)));

function state() {
  const s = Object.assign({}, DEFAULTS);
  for (const part of location.hash.slice(1).split("&")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq) in s) s[part.slice(0, eq)] = decodeURIComponent(part.slice(eq + 1));
  }
  return s;
}
function hashOf(s) {
  return "#" + Object.keys(DEFAULTS).filter((k) => s[k] !== DEFAULTS[k]).map((k) => k + "=" + encodeURIComponent(s[k])).join("&");
}
function go(changes) { location.hash = hashOf(Object.assign(state(), changes)); }

function keep(i, s, c, lo, hi) {
  const v = rows.valid[i], l = rows.label[i], p = rows.pred[i];
  if (s.show === "wrong" && !(v && l >= 0 && l !== p)) return false;
  if (s.show === "correct" && !(v && l === p)) return false;
  if (s.show === "skipped" && v) return false;
  if (s.show === "nolabel" && l >= 0) return false;
  if (c !== null) {
    const top = rows.top[i].length ? rows.top[i][0] : -1;
    const hit = s.by === "label" ? l === c : s.by === "pred" ? v && p === c : s.by === "top" ? top === c : l === c || (v && p === c);
    if (!hit) return false;
  }
  if (lo !== null || hi !== null) {
    const d = rows.strong[i];
    if (d < 0 || (lo !== null && d < lo) || (hi !== null && d > hi)) return false;
  }
  return true;
}
function select(s) {
  const c = s.cls === "" ? null : Number(s.cls);
  const lo = s.dmin === "" ? null : 10 * Number(s.dmin), hi = s.dmax === "" ? null : 10 * Number(s.dmax);
  const out = [];
  for (let i = 0; i < N; i++) if (keep(i, s, c, lo, hi)) out.push(i);
  const by = {strong_asc: [rows.strong, 1], strong_desc: [rows.strong, -1], share_asc: [rows.share, 1], share_desc: [rows.share, -1]}[s.sort];
  if (by) {
    const [col, dir] = by;  // images without a value (-1) last
    out.sort((a, b) => (col[a] < 0) - (col[b] < 0) || dir * (col[a] - col[b]) || a - b);
  } else if (s.sort === "key") {
    out.sort((a, b) => rows.key[a] < rows.key[b] ? -1 : rows.key[a] > rows.key[b] ? 1 : a - b);
  }
  return out;
}

function item(i, s) {
  const v = rows.valid[i], l = rows.label[i], p = rows.pred[i];
  const kind = !v ? "skipped" : l < 0 ? "nolabel" : l === p ? "ok" : "bad";
  const a = el("a", {class: "item " + kind, href: hashOf(Object.assign({}, s, {img: String(i)})), "data-index": String(i)});
  const [th, tw] = R.thumb_shape;
  a.append(v ? el("img", {src: pic("thumbs", i), loading: "lazy", width: String(tw), height: String(th), alt: "CLEAR overlay of image " + i})
             : el("div", {class: "noimg", text: "skipped"}));
  const cap = el("div", {class: "cap"}, el("div", {class: "key", title: rows.key[i], text: "#" + i + " " + rows.key[i]}));
  if (!v) cap.append(el("div", {class: "err", text: (rows.error[String(i)] || "skipped").slice(0, 90)}));
  else {
    cap.append(el("div", {}, "label " + (l < 0 ? "none" : cname(l)) + " \u2192 ", el("span", {class: "pred", text: cname(p)})));
    cap.append(el("div", {text: "dominates " + pm(rows.strong[i]) + " of strong px"}));
    const chips = el("div", {class: "chips"});
    const t = rows.top[i];
    for (let k = 0; k < t.length; k += 2) chips.append(chip(t[k], t[k + 1]));
    cap.append(chips);
  }
  a.append(cap);
  return a;
}
function pager(node, s, pages) {
  node.replaceChildren();
  const p = Number(s.p) || 1;
  const link = (q, text) => q === p ? el("span", {class: "cur", text}) : el("a", {href: hashOf(Object.assign({}, s, {p: String(q), img: ""})), text});
  node.append("page ");
  if (p > 1) node.append(link(1, "\u00ab first"), link(p - 1, "\u2039 prev"));
  for (let q = Math.max(1, p - 3); q <= Math.min(pages, p + 3); q++) node.append(link(q, String(q)));
  if (p < pages) node.append(link(p + 1, "next \u203a"), link(pages, "last \u00bb"));
  node.append(" of " + pages);
}
let listKey = null, list = [];
function renderList(s) {
  const key = hashOf(Object.assign({}, s, {img: ""}));
  if (key === listKey) return;
  listKey = key;
  list = select(s);
  const size = R.page_size, pages = Math.max(1, Math.ceil(list.length / size));
  const p = Math.min(Math.max(1, Number(s.p) || 1), pages);
  $("count").textContent = list.length + " of " + N + " images";
  pager($("pager-top"), Object.assign({}, s, {p: String(p)}), pages);
  pager($("pager-bottom"), Object.assign({}, s, {p: String(p)}), pages);
  const frag = document.createDocumentFragment();
  for (const i of list.slice((p - 1) * size, p * size)) frag.append(item(i, s));
  $("grid").replaceChildren(frag);
}

function facts(i) {
  const v = rows.valid[i], l = rows.label[i], p = rows.pred[i];
  const tbl = el("table");
  const add = (k, val) => tbl.append(el("tr", {}, el("th", {text: k}), el("td", {}, val)));
  add("label", l < 0 ? "none" : cfull(l));
  if (!v) add("skipped", el("span", {class: "err", text: rows.error[String(i)] || ""}));
  else {
    add("prediction", el("span", {class: l >= 0 && l !== p ? "err" : "", text: cfull(p) + (l >= 0 ? (l === p ? ": correct" : ": wrong") : "")}));
    add("prediction's share of the strong pixels", pm(rows.strong[i]));
    add("prediction's share of all pixels", pm(rows.share[i]));
  }
  return tbl;
}
function renderDetail(s) {
  const d = $("detail");
  if (s.img === "" || !(Number(s.img) >= 0 && Number(s.img) < N)) { d.hidden = true; document.title = "CLEAR results"; return; }
  const i = Number(s.img), at = list.indexOf(i);
  const back = Object.assign({}, s, {img: ""});
  if (at >= 0) back.p = String(Math.floor(at / R.page_size) + 1);
  const nav = el("div", {class: "dnav"}, el("a", {href: hashOf(back), id: "close", text: "\u2190 back to the list"}));
  if (at > 0) nav.append(el("a", {href: hashOf(Object.assign({}, s, {img: String(list[at - 1])})), id: "prev", text: "\u2039 previous"}));
  if (at >= 0 && at < list.length - 1) nav.append(el("a", {href: hashOf(Object.assign({}, s, {img: String(list[at + 1])})), id: "next", text: "next \u203a"}));
  const head = el("h2", {text: "image #" + i + ": " + rows.key[i]});
  const panels = el("div", {class: "panels"});
  if (rows.valid[i]) {
    const k = R.panels.length, [ph, pw] = R.panel_shape, scale = Math.max(1, Math.floor(160 / Math.max(ph, pw)));
    R.panels.forEach((name, j) => {
      const pos = k > 1 ? (100 * j / (k - 1)) : 0;
      panels.append(el("figure", {}, el("div", {class: "panel", role: "img", "aria-label": name,
        style: "width:" + pw * scale + "px;height:" + ph * scale + "px;background-image:url('" + pic("detail", i) + "');background-size:" + k * 100 + "% 100%;background-position:" + pos + "% 0"}),
        el("figcaption", {text: name})));
    });
  }
  const legend = el("div", {class: "legend"});
  const t = rows.top[i];
  for (let k = 0; k < t.length; k += 2) legend.append(chip(t[k], t[k + 1]));
  const all = el("div", {class: "legend"});
  if (colours.length <= 20) for (let c = 0; c < colours.length; c++) all.append(chip(c));
  const few = colours.length <= 20;
  d.replaceChildren(...[nav, head, facts(i), panels, el("div", {class: "note", text: "dominant classes of this image (share of all pixels):"}), legend,
    few ? el("div", {class: "note", text: "class colours:"}) : null, few ? all : null,
    el("div", {class: "note", text: "positive focus: the predicted class's response; negative focus: the best other class's; binary: red where the prediction wins, blue where another class does"})].filter((x) => x));
  d.hidden = false;
  document.title = "image #" + i + " \u2013 CLEAR results";
}
function render() {
  const s = state();
  for (const id of ["show", "cls", "by", "dmin", "dmax", "sort"]) if ($(id).value !== s[id]) $(id).value = s[id];
  renderList(s);
  renderDetail(s);
}

function fact(value, label) { return el("div", {class: "fact"}, el("b", {text: value}), el("span", {text: label})); }
function throughput(t, c) {
  const f = (v) => (v || 0).toFixed(1) + " s";
  if (t.images_this_invocation) return fact(t.images_per_s.toFixed(1) + " img/s", "throughput of the last invocation (" +
    t.images_this_invocation + " images in " + f(t.wall_s) + "; reading data " + f(t.data_s) + ", explaining " + f(t.explain_s) + ", writing " + f(t.write_s) + ")");
  const a = t.all_chunks || {};  // the last invocation resumed a finished run: the chunks' own records
  return fact(a.explain_s ? (c.images / a.explain_s).toFixed(1) + " img/s" : "n/a", "explaining, over every chunk's record (" +
    c.images + " images: reading data " + f(a.data_s) + ", explaining " + f(a.explain_s) + ", writing " + f(a.write_s) + ")");
}
function renderSummary() {
  const r = S.run, c = S.counts || {}, res = S.results || {}, t = S.timings || {};
  $("run").textContent = "model " + r.model + (r.model_class ? " (" + r.model_class + ")" : "") + " \u00b7 data " + r.data +
    " \u00b7 method " + r.method + (r.signal ? ", signal " + r.signal : "") + " \u00b7 " + r.num_classes + " classes \u00b7 maps " +
    r.map_shape.join(" x ") + (r.preprocess ? " \u00b7 preprocess " + r.preprocess : "");
  const box = el("div", {class: "facts"},
    fact(String(c.images), "images (" + c.explained + " explained, " + c.errors + " skipped)"),
    fact(pct(res.accuracy), "accuracy: prediction = label, over the " + (res.labelled || 0) + " explained images with a label"),
    fact(pct(res.prediction_share_strong_correct), "class sensitivity: prediction's share of the strong pixels, correct images (chance " + pct(res.chance) + ")"),
    fact(pct(res.agrees), "images whose most dominant class is the prediction"),
    throughput(t, c));
  const parts = [box];
  if (res.sample_note) parts.push(el("p", {class: "note", text: "Note: " + res.sample_note + "."}));
  parts.push(el("p", {class: "note", text: "CLEAR maps: the hue is the dominant class, the brightness its response. Under the maps: " + S.inputs + "."}));
  parts.push(errorsBox(), classTable());
  if (S.confusions.length) parts.push(el("details", {}, el("summary", {text: "most frequent errors (label \u2192 prediction)"}),
    el("div", {class: "legend"}, ...S.confusions.map(([a, b, n]) => el("a", {href: hashOf(Object.assign({}, DEFAULTS, {show: "wrong", cls: String(a), by: "label"})), class: "chip", text: cname(a) + " \u2192 " + cname(b) + ": " + n})))));
  $("summary").replaceChildren(...parts);
}
function errorsBox() {
  const e = S.errors;
  const d = el("details", {}, el("summary", {text: e.total + " images skipped" + (e.kinds.length ? ": " + e.kinds.slice(0, 3).map(([k, n]) => n + " x " + k).join(", ") : "")}));
  const ul = el("ul");
  for (const x of e.first) ul.append(el("li", {}, el("a", {href: hashOf(Object.assign({}, DEFAULTS, {show: "skipped", img: String(x.index)})), text: x.key}), ": " + x.reason));
  if (e.total > e.first.length) ul.append(el("li", {text: "... and " + (e.total - e.first.length) + " more in errors.json"}));
  d.append(ul);
  return d;
}
function classTable() {
  const pc = S.per_class, tbl = el("table");
  tbl.append(el("tr", {}, ...["class", "images (label)", "accuracy", "predicted", "prediction dominates (strong px)"].map((h) => el("th", {text: h}))));
  pc.class.forEach((c, k) => tbl.append(el("tr", {},
    el("td", {}, el("a", {href: hashOf(Object.assign({}, DEFAULTS, {cls: String(c)}))}, swatch(c), " " + cname(c))),
    el("td", {text: String(pc.images[k])}), el("td", {text: pc.images[k] ? pct(pc.correct[k] / pc.images[k]) : "n/a"}),
    el("td", {text: String(pc.predicted[k])}), el("td", {text: pm(pc.strong[k])}))));
  return el("details", {}, el("summary", {text: "per class (" + pc.class.length + ") and the class colours"}), tbl);
}
function setup() {
  const sel = $("cls");
  const seen = new Set(S.per_class.class);
  for (let c = 0; c < colours.length; c++) if (seen.has(c)) sel.append(el("option", {value: String(c), text: c + ": " + cname(c)}));
  for (const id of ["show", "cls", "by", "sort"]) $(id).addEventListener("change", () => go({[id]: $(id).value, p: "1", img: ""}));
  for (const id of ["dmin", "dmax"]) $(id).addEventListener("change", () => go({[id]: $(id).value, p: "1", img: ""}));
  document.addEventListener("keydown", (e) => {
    if ($("detail").hidden) return;
    const a = e.key === "Escape" ? $("close") : e.key === "ArrowLeft" ? $("prev") : e.key === "ArrowRight" ? $("next") : null;
    if (a) location.hash = a.getAttribute("href");
  });
  document.documentElement.style.setProperty("--aspect", R.thumb_shape[1] + " / " + R.thumb_shape[0]);
  window.addEventListener("hashchange", render);
  renderSummary();
  render();
}
setup();
})();
</script>
</body>
</html>
"""


# -- notebooks ----------------------------------------------------------------------------

def _shown(maps, max_images: int):
    """The first ``max_images`` images' maps on the CPU, their pictures (k, H, W, 3), the
    palette and the legend [(class, share of the coloured pixels)]; None when nothing to draw."""
    from clear_native.render import render

    dc = getattr(maps, "dominant_class", None)
    dr = getattr(maps, "dominant_response", None)
    if not isinstance(dc, torch.Tensor) or dc.dim() != 3 or dc.shape[0] == 0 or dc.device.type == "meta":
        return None
    k = min(int(dc.shape[0]), max_images)
    dc, dr = dc[:k].detach().cpu(), dr[:k].detach().cpu().float()
    c = int(getattr(maps, "num_classes", 0) or 0) or int(dc.max()) + 1
    palette = _palettes.get_palette(max(c, 1))
    pics = render(SimpleNamespace(dominant_class=dc, dominant_response=dr), palette=palette).numpy()
    shares = _palettes.class_shares(dc.reshape(1, -1), palette.shape[0], (dr > 0).reshape(1, -1))[0]
    order = [int(i) for i in torch.argsort(shares, descending=True, stable=True) if shares[i] > 0][:12]
    return pics, palette, [(i, float(shares[i])) for i in order]


def _caption(maps, i: int) -> str:
    parts = [f"#{i}"]
    for name, word in (("prediction", "pred"), ("target", "target")):
        v = getattr(maps, name, None)
        if isinstance(v, torch.Tensor) and v.dim() == 1 and i < v.shape[0]:
            parts.append(f"{word} {int(v[i])}")
    return " ".join(parts)


def _title(maps, shown: int) -> str:
    n, h, w = maps.dominant_class.shape
    how = getattr(maps, "method", None)
    how = f", {how}" + (f" ({maps.signal})" if getattr(maps, "signal", None) else "") if how else ""
    c = getattr(maps, "num_classes", 0)
    return (f"{type(maps).__name__}: {n} image{'s' if n != 1 else ''} {h}x{w}{how}"
            + (f", {c} classes" if c else "") + (f"; the first {shown} shown" if shown < n else ""))


def _tile_scale(h: int, w: int) -> float:
    side = max(h, w)
    return 160 / side if side > 160 else float(max(1, 96 // side))


def maps_png(maps, max_images: int = NOTEBOOK_IMAGES) -> bytes | None:
    """PNG bytes: the first ``max_images`` CLEAR maps in a row, each captioned (index,
    prediction, target), and the legend of the dominant classes (share of the coloured
    pixels). ``ClearMaps._repr_png_`` / ``Dominance._repr_png_``."""
    from PIL import Image, ImageDraw

    got = _shown(maps, max_images)
    if got is None:
        return None
    pics, palette, legend = got
    k, h, w = pics.shape[:3]
    s = _tile_scale(h, w)
    th, tw = max(1, round(h * s)), max(1, round(w * s))
    canvas = Image.new("RGB", (max(k * (tw + 8) + 8, 420), th + 70), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), _title(maps, k), fill="black")
    for i in range(k):
        tile = Image.fromarray(pics[i]).resize((tw, th), Image.NEAREST if s >= 1 else Image.BILINEAR)
        canvas.paste(tile, (8 + i * (tw + 8), 20))
        draw.text((8 + i * (tw + 8), 22 + th), _caption(maps, i), fill="black")
    x = 8
    for c, share in legend:
        draw.rectangle((x, th + 44, x + 10, th + 54), fill=tuple(int(v) for v in palette[c]), outline="grey")
        label = f"{c}: {100 * share:.0f}%"
        draw.text((x + 14, th + 43), label, fill="black")
        x += 24 + int(draw.textlength(label))
    buf = _io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def maps_html(maps, max_images: int = NOTEBOOK_IMAGES) -> str | None:
    """HTML: the first ``max_images`` CLEAR maps (inline PNGs), captions and the class
    legend. ``ClearMaps._repr_html_`` / ``Dominance._repr_html_``."""
    from PIL import Image

    got = _shown(maps, max_images)
    if got is None:
        return None
    pics, palette, legend = got
    k, h, w = pics.shape[:3]
    s = _tile_scale(h, w)
    figs = []
    for i in range(k):
        buf = _io.BytesIO()
        Image.fromarray(pics[i]).save(buf, format="PNG")
        src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        figs.append(f'<figure style="margin:0 6px 0 0;text-align:center;font-size:11px"><img src="{src}" '
                    f'width="{round(w * s)}" height="{round(h * s)}" style="image-rendering:pixelated" '
                    f'alt="CLEAR map {i}"><figcaption>{html.escape(_caption(maps, i))}</figcaption></figure>')
    chips = "".join(
        f'<span style="margin-right:10px;white-space:nowrap"><span style="display:inline-block;width:10px;'
        f'height:10px;background:{_hex(palette[c:c + 1])[0]};border:1px solid #888"></span> '
        f"{c}: {100 * share:.0f}%</span>" for c, share in legend)
    return (f'<div><div style="font-weight:600">{html.escape(_title(maps, k))}</div>'
            f'<div style="display:flex;flex-wrap:wrap">{"".join(figs)}</div>'
            f'<div style="font-size:12px">dominant class (share of the coloured pixels): {chips}</div></div>')


def xarray_spec(maps, class_names=None) -> dict:
    """The variables, coordinates and attributes of :func:`maps_xarray` as numpy arrays
    (``{"data_vars": {name: (dims, array)}, "coords": ..., "attrs": ...}``)."""
    from dataclasses import fields

    shape = tuple(maps.dominant_class.shape)
    spatial = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}.get(len(shape) - 1) or tuple(
        f"dim_{k}" for k in range(len(shape) - 1))
    dims = {len(shape): ("image", *spatial), 1: ("image",)}
    data_vars = {}
    for f in fields(maps):
        v = getattr(maps, f.name)
        if not isinstance(v, torch.Tensor) or f.name.startswith("state_"):
            continue
        a = v.detach().cpu()
        a = (a.float() if a.dtype in (torch.float16, torch.bfloat16) else a).numpy()
        if f.name == "logits":
            d = ("image", "class")
        elif f.name == "classes":
            d = ("considered",) if a.ndim == 1 else ("image", "considered")
        elif f.name == "class_maps":
            d = ("image", "class" if getattr(maps, "classes", None) is None else "considered", *spatial)
        else:
            d = dims[a.ndim]
        data_vars[f.name] = (d, a)
    c = int(getattr(maps, "num_classes", 0) or 0)
    coords = {"image": np.arange(shape[0]), **{d: np.arange(k) for d, k in zip(spatial, shape[1:])}}
    if c:
        coords["class"] = np.arange(c)
        if class_names is not None:
            if len(class_names) != c:
                raise ValueError(f"to_xarray: {len(class_names)} class names for {c} classes")
            coords["class_name"] = ("class", np.asarray([str(x) for x in class_names]))
    attrs = {k: getattr(maps, k) for k in ("method", "signal", "num_classes")
             if getattr(maps, k, None) is not None}
    return {"data_vars": data_vars, "coords": coords, "attrs": attrs}


def maps_xarray(maps, class_names=None):
    """The maps as an ``xarray.Dataset``: every tensor field a variable with named
    dimensions (``image``, ``y``, ``x``; ``z``, ``y``, ``x`` for volumes; ``class`` for
    logits and class maps; ``considered`` for the ``classes`` considered), integer
    coordinates, ``class_name`` along ``class`` when given, and method / signal /
    num_classes as attributes. Class
    fields keep their int64 ids (-1: none); float16 / bfloat16 become float32.
    Needs xarray (``pip install xarray``), an optional dependency."""
    try:
        import xarray as xr
    except ImportError as e:
        raise ImportError("to_xarray() needs xarray, an optional dependency: pip install xarray "
                          "(or pip install 'clear_native[xarray]')") from e
    spec = xarray_spec(maps, class_names)
    return xr.Dataset(spec["data_vars"], coords=spec["coords"], attrs=spec["attrs"])
