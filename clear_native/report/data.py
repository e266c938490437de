"""The finished batch run a report is drawn from (:func:`load_run`) and the pictures
under its maps (:class:`Inputs`: the stored input, DATA read again, or none)."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clear_native.io import BatchError


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
