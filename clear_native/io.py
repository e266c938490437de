"""Inputs of batch explanation: models and data sets named on the command line.

* :func:`load_model` -- ``package.module:factory`` (returns an ``nn.Module`` or
  ``(module, preprocess)``), a TorchScript file (``torch.jit.load``), a
  ``torch.export`` file (``.pt2``), or the built-in default model.
* :func:`load_data` -- a folder of images (class sub-folders give labels), an
  ``.npz`` / ``.npy`` array, a ``package.module:function`` returning a sequence or
  map-style ``Dataset``, or the built-in MNIST sample.

Both return fingerprints (sha256) that identify a run's inputs (see
:mod:`clear_native.batch`). Pillow is imported lazily, only to read image folders.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_IMAGE_KEYS = ("images", "x", "X", "data", "inputs", "arr_0")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "label", "arr_1")


class BatchError(Exception):
    """A problem with the user's arguments or inputs (reported without a traceback)."""


# -- models -------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor] | None
    spec: str
    kind: str           # "builtin", "factory", "torchscript" or "export"
    fingerprint: str    # sha256 of the state_dict (names, dtypes, shapes, bytes)


def _import_attr(spec: str, what: str):
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise BatchError(f"{what} {spec!r}: expected 'package.module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does, so local modules import
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BatchError(f"{what} {spec!r}: cannot import module {module_name!r} ({e})") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BatchError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BatchError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


def state_dict_fingerprint(model: nn.Module) -> str:
    """sha256 over the state_dict's names, dtypes, shapes and raw bytes, in order."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_model(spec: str | None) -> LoadedModel:
    """The model named by ``--model`` (on the CPU, in eval mode)."""
    preprocess = None
    if spec is None:
        try:
            from clear_native.models import load_pretrained  # type: ignore[attr-defined]
        except ImportError as e:
            raise BatchError(
                "no built-in model: clear_native.models.load_pretrained is not available in this "
                f"build ({e}); pass --model package.module:factory or a TorchScript / .pt2 file") from e
        try:
            obj = load_pretrained("mnist")
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise BatchError(f"the built-in MNIST model cannot be loaded ({e}); pass --model "
                             "package.module:factory or a TorchScript / .pt2 file") from e
        kind, spec_name = "builtin", "builtin:mnist"
    else:
        path = Path(spec)
        spec_name = spec
        if path.is_file():
            try:
                if path.suffix == ".pt2":
                    obj, kind = torch.export.load(str(path)).module(), "export"
                else:
                    obj, kind = torch.jit.load(str(path), map_location="cpu"), "torchscript"
            except Exception as e:  # noqa: BLE001 - any loader failure is the user's file
                raise BatchError(f"--model {spec!r}: cannot load it as a "
                                 f"{'torch.export (.pt2)' if path.suffix == '.pt2' else 'TorchScript'} "
                                 f"file ({type(e).__name__}: {e})") from e
        elif ":" in spec and not path.suffix in (".pt", ".pt2", ".ts", ".pth"):
            factory = _import_attr(spec, "--model")
            try:
                obj = factory()
            except Exception as e:  # noqa: BLE001
                raise BatchError(f"--model {spec!r}: the factory raised {type(e).__name__}: {e}") from e
            kind = "factory"
        else:
            raise BatchError(f"--model {spec!r}: no such file, and not a 'package.module:factory' name")
    if isinstance(obj, tuple):
        if len(obj) != 2 or not callable(obj[1]):
            raise BatchError(f"--model {spec_name!r}: a factory must return a module or (module, preprocess)")
        obj, preprocess = obj
    if not isinstance(obj, nn.Module):
        raise BatchError(f"--model {spec_name!r}: expected a torch.nn.Module, got {type(obj).__name__}")
    try:
        obj.eval()
    except (NotImplementedError, RuntimeError):  # some exported programs refuse .eval()
        pass
    return LoadedModel(obj, preprocess, spec_name, kind, state_dict_fingerprint(obj))


# -- data ---------------------------------------------------------------------------------

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

    def __len__(self) -> int:
        return len(self.keys)


class _FolderReader:
    def __init__(self, paths: list[str], labels: list[int]):
        self.paths, self.labels = paths, labels

    def read(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img.load()
            if img.mode == "1":
                img = img.convert("L")
            elif img.mode not in ("L", "RGB", "I", "F", "I;16"):
                img = img.convert("RGB")
            arr = np.asarray(img)
        return arr, self.labels[i]

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


def _folder(path: Path) -> DataSource:
    top_dirs = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise BatchError(f"--data {str(path)!r}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
    rel = [p.relative_to(path) for p in files]
    class_of = {d: i for i, d in enumerate(top_dirs)}
    labels = [class_of[r.parts[0]] if len(r.parts) > 1 else -1 for r in rel]
    h = hashlib.sha256(b"folder")
    for r, p in zip(rel, files):
        st = p.stat()
        h.update(f"{r.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    used = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
    return DataSource(str(path), "folder", [r.as_posix() for r in rel], h.hexdigest(),
                      _FolderReader([str(p) for p in files], labels),
                      class_names=top_dirs if used else None)


def _arrays(path: Path) -> DataSource:
    h = hashlib.sha256(path.suffix.encode())
    _hash_file(h, path)
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
                      _ArrayReader(images, labels))


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
                      class_names=list(names) if isinstance(names, (list, tuple)) else None, notes=notes)


def _builtin() -> DataSource:
    try:
        from clear_native import data as _data  # type: ignore[attr-defined]
    except ImportError as e:
        raise BatchError("no built-in data set: clear_native.data is not available in this build "
                         f"({e}); pass --data FOLDER, an .npz/.npy file or package.module:function") from e
    try:
        sample = _data.load_sample("mnist")
    except (FileNotFoundError, ValueError, OSError) as e:
        raise BatchError(f"the built-in MNIST sample cannot be loaded ({e}); pass --data FOLDER, "
                         "an .npz/.npy file or package.module:function") from e
    images, labels, preprocess = _unpack_sample(sample)
    index = getattr(sample, "index", None)
    images = np.asarray(images)
    labels = None if labels is None else np.asarray(labels)
    h = hashlib.sha256(b"builtin:mnist")
    h.update(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    names = None
    if hasattr(_data, "class_names"):
        names = list(_data.class_names("mnist"))
    keys = ([f"mnist-test:{int(j)}" for j in index] if index is not None and len(index) == len(images)
            else [str(i) for i in range(len(images))])
    return DataSource("builtin:mnist", "builtin", keys, h.hexdigest(),
                      _ArrayReader(images, labels), class_names=names, preprocess=preprocess)


def _unpack_sample(sample):
    """(images, labels, preprocess) from the built-in sample, whatever container it is."""
    if isinstance(sample, dict):
        return (sample.get("images"), sample.get("labels"), sample.get("preprocess"))
    if isinstance(sample, tuple):
        items = list(sample) + [None] * (3 - len(sample))
        return items[0], items[1], items[2]
    return (getattr(sample, "images"), getattr(sample, "labels", None),
            getattr(sample, "preprocess", None))


def load_data(spec: str | None) -> DataSource:
    """The data set named by ``--data``."""
    if spec is None:
        return _builtin()
    path = Path(spec)
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise BatchError(f"--data {spec!r}: the folder is not readable")
        return _folder(path)
    if path.is_file():
        if path.suffix not in (".npz", ".npy"):
            raise BatchError(f"--data {spec!r}: a data file must be .npz or .npy, got {path.suffix!r}")
        if not os.access(path, os.R_OK):
            raise BatchError(f"--data {spec!r}: the file is not readable")
        return _arrays(path)
    if ":" in spec and not path.suffix:
        return _factory(spec)
    raise BatchError(f"--data {spec!r}: no such folder or file, and not a 'package.module:function' name")


def to_chw_float(img, preprocess: Callable | None = None) -> torch.Tensor:
    """One image as a (ch, H, W) floating point tensor.

    With ``preprocess``, its result (a tensor or array) is used. Otherwise integer
    images are scaled to [0, 1] (uint8 / 255, uint16 / 65535), (H, W) gets a channel
    dim and (H, W, ch) with ch in {1, 3, 4} becomes (ch, H, W).
    """
    if preprocess is not None:
        img = preprocess(img)
    if not isinstance(img, torch.Tensor):
        if hasattr(img, "mode") and hasattr(img, "size"):  # a PIL image
            img = np.asarray(img)
        arr = np.asarray(img)
        if arr.dtype == np.uint8:
            t = torch.from_numpy(arr.astype(np.float32) / 255.0)
        elif arr.dtype == np.uint16:
            t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
        elif arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            t = torch.from_numpy(arr.astype(np.float32))
        elif np.issubdtype(arr.dtype, np.floating):
            t = torch.from_numpy(np.array(arr, dtype=arr.dtype if arr.dtype != np.float16 else np.float32))
        else:
            raise ValueError(f"unsupported array dtype {arr.dtype}")
        if t.dim() == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
            t = t.permute(2, 0, 1)
    else:
        t = img.detach()
        if not t.dtype.is_floating_point:
            t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"expected an image (H, W), (ch, H, W) or (H, W, ch), got shape {tuple(t.shape)}")
    return t.contiguous()
