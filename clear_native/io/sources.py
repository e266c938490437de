"""Data sets named on the command line (``--data``): an image folder, an ``.npz`` /
``.npy`` array, a ``package.module:function`` returning a data set, or the built-in MNIST
sample (:func:`load_data`), each a :class:`DataSource` with a fingerprint and a reader."""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from clear_native import data as _data
from clear_native.io.common import BatchError, _import_attr

# Largest image (width x height, from the file's header) that an image folder's reader
# decodes; larger files are per-image errors read no further (``--max-pixels``). Pillow's
# own check (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485) only warns below twice its
# limit and so would let a 12000 x 12000 PNG of 140 KB be decoded in full (1.6 GB);
# above twice its limit Pillow itself refuses the file, whatever this cap is.
MAX_PIXELS = 1 << 26  # 67,108,864: 8192 x 8192
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_IMAGE_KEYS = ("images", "x", "X", "data", "inputs", "arr_0")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "label", "arr_1")



@dataclass
class DataSource:
    """A map-style data set: ``read(i)`` -> (image, label); ``keys[i]`` names item i."""

    spec: str
    kind: str                     # "folder", "npz", "npy", "factory" or "builtin"
    keys: list[str]
    fingerprint: str
    reader: Any                   # picklable object with .read(i) -> (image, label)
    class_names: list[str] | None = None
    preprocess: Callable | None = None   # the data set's own preprocessing, if any
    notes: list[str] = field(default_factory=list)
    labels: str | None = None     # how the labels were obtained (written to the manifest)
    fingerprint_of: str | None = None    # what the fingerprint covers (written to the manifest)

    def __len__(self) -> int:
        return len(self.keys)


class _FolderReader:
    def __init__(self, paths: list[str], labels: list[int], max_pixels: int | None = MAX_PIXELS):
        self.paths, self.labels, self.max_pixels = paths, labels, max_pixels

    def read(self, i: int):
        from PIL import Image

        with warnings.catch_warnings():
            # Pillow warns above PIL.Image.MAX_IMAGE_PIXELS; the cap below decides instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(self.paths[i])  # reads the header only
            except Image.DecompressionBombError as e:
                raise ValueError(f"{e} (Pillow's own limit, PIL.Image.MAX_IMAGE_PIXELS); "
                                 "not decoded") from None
        with img:
            w, h = img.size
            if self.max_pixels and w * h > self.max_pixels:
                raise ValueError(f"the image is {w} x {h} = {w * h} pixels, above the limit of "
                                 f"{self.max_pixels} (--max-pixels); not decoded")
            img.load()
            if img.mode == "1":
                img = img.convert("L")
            elif img.mode not in ("L", "RGB", "I", "F", "I;16"):
                img = img.convert("RGB")
        # a PIL image, as torchvision hands it to a transform (to_chw_float converts it
        # when there is no preprocess)
        return img, self.labels[i]

    def label(self, i: int) -> int:
        return self.labels[i]


class _ArrayReader:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def read(self, i: int):
        label = -1 if self.labels is None else int(self.labels[i])
        return np.asarray(self.images[i]), label

    def label(self, i: int) -> int:
        return -1 if self.labels is None else int(self.labels[i])


class _SequenceReader:
    def __init__(self, seq):
        self.seq = seq

    def read(self, i: int):
        item = self.seq[i]
        if isinstance(item, (tuple, list)):
            label = item[1] if len(item) > 1 else -1
            label = int(label.item() if isinstance(label, (torch.Tensor, np.ndarray)) else label) \
                if label is not None else -1
            return item[0], label
        if isinstance(item, dict):
            img = next((item[k] for k in ("image", "images", "x", "input") if k in item), None)
            if img is None:
                raise ValueError(f"dict item without an 'image' key (keys {sorted(item)})")
            label = item.get("label", item.get("target", -1))
            return img, int(label) if label is not None else -1
        return item, -1


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def folder_labels(names: list[str]) -> tuple[dict[str, int], list[str] | None, str]:
    """Labels of class sub-folders: ``(label of each name, class names, rule)``.

    Where every name is a non-negative integer (``0/`` ... ``9/``, ``007/``), the label
    is that integer (folder ``9/`` is label 9 whether or not ``8/`` exists) and there are
    no class names. Otherwise the names are sorted and a folder's label is its index in
    that list, the class names.
    """
    if names and all(n.isascii() and n.isdigit() and len(n.lstrip("0")) <= 9 for n in names):
        ints = {n: int(n) for n in names}
        if len(set(ints.values())) == len(ints):  # "7" and "07" would share a label
            return ints, None, "the class sub-folder's name, an integer (folder 9/ is label 9)"
    names = sorted(names)
    return ({n: i for i, n in enumerate(names)}, names,
            "the index of the class sub-folder's name in class_names (the folder names, sorted)")


_FOLDER_FP_META = ("each file's path relative to DATA, size and modification time (file metadata, "
                   "not the contents: pass --hash-data to hash the contents)")
_FOLDER_FP_CONTENT = "each file's path relative to DATA and its contents (sha256, --hash-data)"


def _folder(path: Path, max_pixels: int | None = MAX_PIXELS, hash_contents: bool = False) -> DataSource:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise BatchError(f"--data {str(path)!r}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    rel = [p.relative_to(path) for p in files]
    used = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
    # the classes: the top-level sub-folders holding at least one image (an empty or
    # stray folder does not shift the labels); images directly in DATA get -1
    class_of, names, rule = folder_labels(used)
    labels = [class_of[r.parts[0]] if len(r.parts) > 1 else -1 for r in rel]
    if not used:
        names, rule = None, "none (no class sub-folders): -1"
    h = hashlib.sha256(b"folder-contents" if hash_contents else b"folder")
    for r, p in zip(rel, files):
        if hash_contents:
            h.update(f"{r.as_posix()}\0".encode())
            fh = hashlib.sha256()
            try:
                _hash_file(fh, p)
            except OSError as e:  # an unreadable file: its read fails later, per image
                fh.update(f"unreadable: {type(e).__name__}".encode())
            h.update(fh.digest())
        else:
            st = p.stat()
            h.update(f"{r.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return DataSource(str(path), "folder", [r.as_posix() for r in rel], h.hexdigest(),
                      _FolderReader([str(p) for p in files], labels, max_pixels),
                      class_names=names, labels=rule,
                      fingerprint_of=_FOLDER_FP_CONTENT if hash_contents else _FOLDER_FP_META)


def _arrays(path: Path) -> DataSource:
    h = hashlib.sha256(path.suffix.encode())
    _hash_file(h, path)
    lkey = None
    try:
        if path.suffix == ".npy":
            images, labels = np.load(path, mmap_mode="r", allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                key = next((k for k in _IMAGE_KEYS if k in names), names[0] if names else None)
                if key is None:
                    raise BatchError(f"--data {str(path)!r}: the .npz file is empty")
                lkey = next((k for k in _LABEL_KEYS if k in names and k != key), None)
                images = z[key]
                labels = z[lkey] if lkey else None
    except BatchError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BatchError(f"--data {str(path)!r}: cannot read it as a numpy array file "
                         f"({type(e).__name__}: {e})") from e
    if images.ndim < 3:
        raise BatchError(f"--data {str(path)!r}: expected images (N, H, W), (N, C, H, W) or "
                         f"(N, H, W, C), got shape {images.shape}")
    if labels is not None and labels.shape[:1] != images.shape[:1]:
        raise BatchError(f"--data {str(path)!r}: {len(labels)} labels for {len(images)} images")
    return DataSource(str(path), path.suffix[1:], [str(i) for i in range(len(images))], h.hexdigest(),
                      _ArrayReader(images, labels),
                      labels="none: -1" if labels is None else f"the file's {lkey!r} array",
                      fingerprint_of="the file's contents (sha256)")


def _factory(spec: str) -> DataSource:
    fn = _import_attr(spec, "--data")
    try:
        seq = fn()
    except Exception as e:  # noqa: BLE001
        raise BatchError(f"--data {spec!r}: the function raised {type(e).__name__}: {e}") from e
    if not hasattr(seq, "__len__") or not hasattr(seq, "__getitem__"):
        raise BatchError(f"--data {spec!r}: expected a sequence or map-style Dataset (with __len__ "
                         f"and __getitem__), got {type(seq).__name__}")
    n = len(seq)
    fp = getattr(seq, "fingerprint", None)
    notes = []
    if fp is None:
        fp = hashlib.sha256(f"factory\0{spec}\0{type(seq).__qualname__}\0{n}".encode()).hexdigest()
        notes.append("data fingerprint = hash of the factory name, type and length only "
                     "(give the data set a `fingerprint` attribute to identify its contents)")
    names = getattr(seq, "classes", None)
    return DataSource(spec, "factory", [str(i) for i in range(n)], str(fp), _SequenceReader(seq),
                      class_names=list(names) if isinstance(names, (list, tuple)) else None, notes=notes,
                      labels="the data set's items", fingerprint_of=(
                          "the data set's `fingerprint` attribute" if not notes
                          else "the factory's name, the data set's type and length"))


def _builtin() -> DataSource:
    try:
        sample = _data.load_sample("mnist")
    except (FileNotFoundError, ValueError, OSError) as e:
        raise BatchError(f"the built-in MNIST sample cannot be loaded ({e}); pass --data FOLDER, "
                         "an .npz/.npy file or package.module:function") from e
    images, labels, index = sample.images, sample.labels, sample.index
    h = hashlib.sha256(b"builtin:mnist")
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    keys = ([f"mnist-test:{int(j)}" for j in index] if index is not None and len(index) == len(images)
            else [str(i) for i in range(len(images))])
    return DataSource("builtin:mnist", "builtin", keys, h.hexdigest(), _ArrayReader(images, labels),
                      class_names=list(_data.class_names("mnist")), labels="the sample's labels",
                      fingerprint_of="the sample's images and labels")


def load_data(spec: str | None, *, max_pixels: int | None = MAX_PIXELS,
              hash_contents: bool = False) -> DataSource:
    """The data set named by ``--data``.

    ``max_pixels``: an image folder's files larger than this (width x height, read from
    the header) are per-image errors, not decoded (None / 0: no limit beyond Pillow's).
    ``hash_contents``: fingerprint an image folder by its files' contents; by default by
    their metadata (relative path, size, modification time), so an edit that keeps a
    file's size and modification time goes unnoticed on resume. Array files are always
    hashed by contents.
    """
    if spec is None:
        return _builtin()
    path = Path(spec)
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise BatchError(f"--data {spec!r}: the folder is not readable")
        return _folder(path, max_pixels, hash_contents)
    if path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise BatchError(f"--data {spec!r}: a data file must be .npz or .npy, got {path.suffix!r}")
        if not os.access(path, os.R_OK):
            raise BatchError(f"--data {spec!r}: the file is not readable")
        return _arrays(path)
    if ":" in spec and not path.suffix:
        return _factory(spec)
    raise BatchError(f"--data {spec!r}: no such folder or file, and not a 'package.module:function' name")
