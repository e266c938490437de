"""A data source as the DataLoader of a batch run reads it: one item per image with its
error instead of an exception (a bad image is recorded, never fatal), and one batch per
chunk with the images of the run's shape stacked."""
from __future__ import annotations

from typing import Callable

import torch

from clear_native.io.preprocess import to_chw_float
from clear_native.io.sources import DataSource


class Items(torch.utils.data.Dataset):
    """Items of a data source as (index, image (ch, H, W) | None, label, error | None)."""

    def __init__(self, source: DataSource, preprocess: Callable | None):
        self.reader = source.reader
        self.preprocess = preprocess
        self.n = len(source)
        self.keys = source.keys

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        try:
            img, label = self.reader.read(i)
            return i, to_chw_float(img, self.preprocess), int(label), None
        except Exception as e:  # noqa: BLE001 - a bad image is recorded, never fatal
            try:  # the label is often known without reading the image (class sub-folders)
                label = int(self.reader.label(i)) if hasattr(self.reader, "label") else -1
            except Exception:  # noqa: BLE001
                label = -1
            return i, None, label, f"{type(e).__name__}: {e}"


class Collate:
    """Collates the items of one chunk: ``indices``, ``labels``, ``good`` (the indices
    explained), ``images`` (their stack, None when there is none) and ``errors``
    ((index, reason); an image of another shape than the run's is one)."""

    def __init__(self, shape: tuple[int, ...] | None):
        self.shape = shape

    def __call__(self, items):
        good, errors, labels, indices = [], [], [], []
        for i, img, label, err in items:
            indices.append(i)
            labels.append(label)
            if err is None and self.shape is not None and tuple(img.shape) != self.shape:
                err = f"image shape {tuple(img.shape)} differs from the run's {self.shape}"
            if err is not None:
                errors.append((i, err))
            else:
                good.append((i, img))
        images = torch.stack([g[1] for g in good]) if good else None
        return {"indices": indices, "labels": labels, "good": [g[0] for g in good],
                "images": images, "errors": errors}
