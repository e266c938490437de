"""One chunk's results as the run stores them: the blocks of its arrays (fill values
where an image was not explained), its table rows and its commit record, the model's
inputs as pictures, and the PNG files of ``--store png``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from clear_native import metrics
from clear_native.batch.options import STRONG
from clear_native.io import BatchError
from clear_native.store import write_error

_NO_STATS = {"prediction_share": None, "top_dominant": -1, "strong_share": None, "prediction_share_strong": None,
             "agrees": False, "dominant_classes": [], "dominant_shares": []}
_NOT_FINITE = "the model's logits for this image are not finite (NaN / infinite); not explained"


def input_pictures(images: torch.Tensor) -> np.ndarray:
    """(n, ch, H, W) model inputs as uint8 pictures: x 255 for an image within [0, 1], else
    each channel stretched from its min to its max (a normalised input: mean / std)."""
    x = images.detach().float().cpu()
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    unit = ((lo >= 0) & (hi <= 1)).flatten(1).all(1).view(-1, 1, 1, 1)
    stretched = (x - lo) / (hi - lo).clamp_min(1e-12)
    return (torch.where(unit, x, stretched) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def write_pngs(folder: Path, render: Callable, maps, indices, num_classes: int) -> None:
    """``folder/<index>.png``: the CLEAR image of each of ``indices`` (write-then-rename)."""
    from PIL import Image

    images = render(maps, num_classes=num_classes)
    images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim == 4 and images.shape[1] in (3, 4) and images.shape[-1] not in (3, 4):
        images = images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    for i, img in zip(indices, images):
        path = folder / f"{i:07d}.png"
        tmp = folder / f".{i:07d}.png.tmp"
        try:
            Image.fromarray(img).save(tmp, format="PNG")
            os.replace(tmp, path)
        except OSError as e:
            raise BatchError(write_error(folder.parent, e)) from e


def _fill(arrays: dict, m: int) -> dict:
    """Blocks of ``m`` rows of each array's fill value."""
    return {name: np.full((m, *arr.shape[1:]), arr.fill_value, dtype=arr.dtype) for name, arr in arrays.items()}


def _put_maps(blocks: dict, rows: np.ndarray, maps, images: torch.Tensor) -> None:
    """The explained images' rows of every array from ``maps`` (``input`` from ``images``)."""
    blocks["valid"][rows] = True
    for name in blocks:
        if name in ("valid", "label", "input"):
            continue
        v = getattr(maps, name)
        v = v.detach().float().cpu().numpy() if v.dtype.is_floating_point else v.cpu().numpy()
        blocks[name][rows] = v.astype(blocks[name].dtype, copy=False)
    if "input" in blocks:
        blocks["input"][rows] = input_pictures(images)


def _drop_not_finite(blocks: dict, arrays: dict, rows: np.ndarray, batch: dict, maps, stats: list) -> None:
    """Rows whose logits hold a NaN / infinite value get no prediction: fill values (but
    the label), no statistics, valid False and the reason in ``batch["errors"]``."""
    finite = torch.isfinite(maps.logits.detach()).all(1).cpu().numpy()
    for r, i, ok in zip(rows, batch["good"], finite):
        if not ok:
            for name, arr in arrays.items():
                if name != "label":
                    blocks[name][r] = arr.fill_value
            stats[r] = None
            batch["errors"] = sorted(batch["errors"] + [(i, _NOT_FINITE)])


def _table(start: int, m: int, batch: dict, blocks: dict, stats: list, keys: list[str]) -> list[dict]:
    """The chunk's table rows (one per image, errors included)."""
    table = []
    for r in range(m):
        i = start + r
        err = next((e for j, e in batch["errors"] if j == i), None)
        table.append({"index": i, "key": keys[i], "label": int(batch["labels"][r]),
                      "prediction": int(blocks["prediction"][r]), "valid": err is None,
                      "error": err, **(stats[r] or _NO_STATS)})
    return table


def assemble(k: int, span: tuple[int, int], batch: dict, maps, arrays: dict, keys: list[str],
             num_classes: int, png: tuple[Path, Callable] | None = None) -> tuple[dict, dict]:
    """(the blocks of chunk ``k``'s arrays, its commit record without files and timings)
    from its collated ``batch`` (:class:`clear_native.io.Collate`) and ``maps`` (None:
    no image of it was explained). ``png``: (folder, renderer) of ``--store png``."""
    start, stop = span
    m = stop - start
    rows = np.array(batch["good"], dtype=np.int64) - start
    blocks = _fill(arrays, m)
    blocks["label"][:] = batch["labels"]
    stats = [None] * m
    if maps is not None:
        _put_maps(blocks, rows, maps, batch["images"])
        table = metrics.table_rows(maps.dominant_class, maps.dominant_response, maps.prediction, num_classes,
                                   STRONG)
        for r, s in zip(rows, table):
            stats[r] = s
        _drop_not_finite(blocks, arrays, rows, batch, maps, stats)
        if png is not None:
            write_pngs(png[0], png[1], maps, batch["good"], num_classes)
    record = {"chunk": k, "start": start, "stop": stop, "rows": _table(start, m, batch, blocks, stats, keys),
              "errors": [{"index": i, "key": keys[i], "reason": e} for i, e in batch["errors"]]}
    return blocks, record
