"""Inputs of batch explanation: models and data sets named on the command line.

* :func:`load_model` -- ``package.module:factory`` (returns an ``nn.Module`` or
  ``(module, preprocess)``), ``torchvision.models:NAME`` or ``timm:NAME`` (built
  without pretrained weights: nothing is downloaded; ``weights=`` / ``--weights FILE``
  loads a state_dict with ``torch.load(weights_only=True)``), a TorchScript file
  (``torch.jit.load``), a ``torch.export`` file (``.pt2``), or the built-in default model.
* :func:`load_data` -- a folder of images (class sub-folders give labels), an
  ``.npz`` / ``.npy`` array, a ``package.module:function`` returning a sequence or
  map-style ``Dataset``, or the built-in MNIST sample.
* :func:`resolve_preprocess` -- what each image goes through before the model
  (``--preprocess``): ``"imagenet"`` (:class:`ImagenetPreprocess`), ``"none"``, a
  ``package.module:callable``, else the model factory's or the data set's own.

A preprocess is called with each item as the data set gives it: an image file as a
**PIL image** (torchvision's convention: ``Image.open`` + ``load``; palette, RGBA, CMYK
... images converted to RGB, 1-bit to L, the others as stored), an ``.npz`` / ``.npy``
item as a numpy array, a data set function's item as it returns it (array, tensor or
PIL image). It returns a ``(ch, H, W)`` tensor or array (PIL images and ``(H, W[, ch])``
arrays are converted as without a preprocess, see :func:`to_chw_float`).

Both return fingerprints (sha256) that identify a run's inputs (see
:mod:`clear_native.batch`). Pillow is imported lazily, only to read image folders.

Inputs that can run code (see README, "Inputs that can run code"):

* ``--model package.module:factory`` and ``--data package.module:function`` import
  and run Python code: always.
* ``--model x.pt2`` (``torch.export.load``) is code too: pickled weights, constants and
  sample inputs are unpickled with ``weights_only=False`` (sample inputs fall back to it
  when the safe loader fails), AOTInductor packages load shared libraries, and even an
  archive of plain tensors runs Python: the graph's symbolic shape expressions are
  parsed with ``sympy.sympify``, which evaluates them. Such files are loaded only with
  ``trust_code=True`` (``--trust-model-code``), with a :class:`ModelCodeWarning`.
* ``--model x.pt`` (``torch.jit.load``) runs the file's TorchScript program when the
  model is called: no Python (no imports; the file's pickles go through TorchScript's
  restricted unpickler), but any operator registered in the process, file reads with
  ``torch.from_file`` included. It is loaded without the flag, as the program of
  whoever wrote the file.
* Image folders and ``.npz`` / ``.npy`` files are data: numpy loads with
  ``allow_pickle=False``; images are decoded by Pillow, after a header check of their
  size (:data:`MAX_PIXELS`).
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

# Largest image (width x height, from the file's header) that an image folder's reader
# decodes; larger files are per-image errors read no further (``--max-pixels``). Pillow's
# own check (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485) only warns below twice its
# limit and so would let a 12000 x 12000 PNG of 140 KB be decoded in full (1.6 GB);
# above twice its limit Pillow itself refuses the file, whatever this cap is.
MAX_PIXELS = 1 << 26  # 67,108,864: 8192 x 8192
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_IMAGE_KEYS = ("images", "x", "X", "data", "inputs", "arr_0")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "label", "arr_1")


class BatchError(Exception):
    """A problem with the user's arguments or inputs (reported without a traceback)."""


class ModelCodeWarning(UserWarning):
    """A model file that can run code is being loaded (``trust_code=True``)."""


# -- models -------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor] | None
    spec: str
    kind: str           # "builtin", "factory", "torchvision", "timm", "torchscript" or "export"
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


TRUST_FLAG = "--trust-model-code"


def load_model(spec: str | None, *, trust_code: bool = False, weights: str | None = None) -> LoadedModel:
    """The model named by ``--model`` (on the CPU, in eval mode).

    A ``torch.export`` file (``.pt2``) is loaded only with ``trust_code=True`` (with a
    :class:`ModelCodeWarning`): ``torch.export.load`` can run code stored in the file
    (see the module's docstring), whatever its weights are. ``torchvision.models:NAME``
    and ``timm:NAME`` are built without pretrained weights (nothing is downloaded);
    ``weights``: a state_dict file loaded into the model (:func:`load_weights`).
    """
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
                    _check_trusted_export(spec, trust_code)
                    obj, kind = torch.export.load(str(path)).module(), "export"
                else:
                    obj, kind = torch.jit.load(str(path), map_location="cpu"), "torchscript"
            except BatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any loader failure is the user's file
                raise BatchError(f"--model {spec!r}: cannot load it as a "
                                 f"{'torch.export (.pt2)' if path.suffix == '.pt2' else 'TorchScript'} "
                                 f"file ({type(e).__name__}: {e})") from e
        elif spec.partition(":")[0] in _ZOOS and spec.partition(":")[2]:
            obj, kind = _zoo_model(spec), spec.partition(":")[0].split(".")[0]
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
    if weights is not None:
        load_weights(obj, weights)
    return LoadedModel(obj, preprocess, spec_name, kind, state_dict_fingerprint(obj))


_ZOOS = ("torchvision.models", "torchvision", "timm")


def _zoo_model(spec: str) -> nn.Module:
    """``torchvision.models:NAME`` / ``timm:NAME``, built without pretrained weights."""
    zoo, _, name = spec.partition(":")
    package = "timm" if zoo == "timm" else "torchvision"
    try:
        module = importlib.import_module("timm" if zoo == "timm" else "torchvision.models")
    except ImportError as e:
        raise BatchError(f"--model {spec!r} needs {package}, which is not installed here ({e}): "
                         f"pip install {package}; or give the model as package.module:factory") from e
    names = module.list_models()
    known = module.is_model(name) if hasattr(module, "is_model") else name in names  # timm: "arch.tag" too
    if not known:
        near = [n for n in names if name.lower()[:4] in n.lower()][:8] or names[:8]
        raise BatchError(f"--model {spec!r}: {package} has no model {name!r} (e.g. {', '.join(near)}; "
                         f"{len(names)} in all: {package}{'' if zoo == 'timm' else '.models'}.list_models())")
    try:
        if zoo == "timm":
            return module.create_model(name, pretrained=False)
        return module.get_model(name, weights=None)
    except Exception as e:  # noqa: BLE001 - a builder's failure is reported, not a traceback
        raise BatchError(f"--model {spec!r}: building it failed ({type(e).__name__}: {e})") from e


def load_weights(model: nn.Module, path: str) -> None:
    """Loads the state_dict in ``path`` (``torch.load(weights_only=True)``: tensors only,
    no code) into ``model``. A checkpoint dict holding it under ``state_dict`` /
    ``model`` / ``model_state_dict`` is unwrapped, and a ``module.`` prefix on every key
    (DistributedDataParallel) dropped. Missing, unexpected or misshapen entries are a
    :class:`BatchError` naming the first few."""
    from collections.abc import Mapping

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BatchError(f"--weights {path!r}: cannot load it with torch.load(weights_only=True) "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BatchError(f"--weights {path!r}: expected a state_dict (a dict of tensors), "
                         f"got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shapes that differ
        raise BatchError(f"--weights {path!r} does not fit the model: {_first_lines(str(e))}") from e
    if missing or unexpected:
        def few(keys):
            return ", ".join(list(keys)[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise BatchError(f"--weights {path!r} does not fit the model: " + "; ".join(
            f"{what} {len(keys)} entries: {few(keys)}" for what, keys in
            (("missing", missing), ("unexpected", unexpected)) if keys))


def _first_lines(text: str, n: int = 4) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:n]) + (f" ... ({len(lines) - n} more lines)" if len(lines) > n else "")


# -- preprocessing ------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImagenetPreprocess:
    """torchvision's ImageNet evaluation transform, without torchvision:
    ``Resize(256)`` (shorter side to ``resize``, bilinear, antialiased), ``CenterCrop(224)``,
    ``ToTensor()`` and ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``; returns ``(3, crop, crop)``
    float32. Grey images are repeated to 3 channels, an alpha channel is dropped.

    A PIL image (or a uint8 ``(H, W[, ch])`` array, made a PIL image) is resized by Pillow,
    as torchvision does for PIL images; a float array or a tensor (``(ch, H, W)``, float in
    [0, 1] or uint8) by ``torch.nn.functional.interpolate(antialias=True)``, as torchvision
    does for tensors. ``normalize=False`` gives the cropped image in [0, 1] (for display).
    """

    def __init__(self, resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 normalize: bool = True):
        self.resize, self.crop, self.normalize = int(resize), int(crop), normalize
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        return f"ImagenetPreprocess(resize={self.resize}, crop={self.crop}, normalize={self.normalize})"

    def _size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) with the shorter side ``resize`` (torchvision's rounding: int())."""
        if w <= h:
            return int(self.resize * h / w), self.resize
        return self.resize, int(self.resize * w / h)

    def _offsets(self, h: int, w: int) -> tuple[int, int]:
        return int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))

    def __call__(self, img) -> torch.Tensor:
        from PIL import Image

        if isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim in (2, 3) \
                and (img.ndim == 2 or img.shape[-1] in (1, 3, 4)):
            img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
        if isinstance(img, Image.Image):
            t = self._pil(img)
        else:
            t = self._tensor(img if isinstance(img, torch.Tensor) else to_chw_float(img))
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=t.dtype).view(3, 1, 1)
            std = torch.tensor(self.std, dtype=t.dtype).view(3, 1, 1)
            t = (t - mean) / std
        return t

    def _pil(self, img) -> torch.Tensor:
        from PIL import Image

        img = img.convert("RGB")
        w, h = img.size
        nh, nw = self._size(h, w)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), Image.BILINEAR)
        top, left = self._offsets(nh, nw)
        img = img.crop((left, top, left + self.crop, top + self.crop))  # zero padding outside
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        t = t.detach()
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3:
            raise ValueError(f"imagenet preprocess: expected an image (ch, H, W), got shape {tuple(t.shape)}")
        t = t[:3] if t.shape[0] >= 3 else t[:1].expand(3, -1, -1)
        h, w = t.shape[1:]
        nh, nw = self._size(h, w)
        if (nh, nw) != (h, w):
            t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        top, left = self._offsets(nh, nw)
        pad = [max(0, -left), max(0, left + self.crop - nw), max(0, -top), max(0, top + self.crop - nh)]
        if any(pad):
            t = F.pad(t, pad)
            top, left = max(top, 0), max(left, 0)
        return t[:, top:top + self.crop, left:left + self.crop].contiguous()


PREPROCESS_CHOICES = ("imagenet", "none")


def resolve_preprocess(spec: str | None, model: LoadedModel | None = None,
                       data: DataSource | None = None) -> Callable | None:
    """The preprocess of ``--preprocess``: ``"imagenet"`` (:class:`ImagenetPreprocess`),
    ``"none"`` (no preprocess, even where the model or the data set has one),
    ``package.module:callable`` (called with each image, see the module's docstring), or
    None: the model factory's preprocess, else the data set's own, else none."""
    if spec is None:
        return (model.preprocess if model is not None else None) or (data.preprocess if data else None)
    if spec == "imagenet":
        return ImagenetPreprocess()
    if spec == "none":
        return None
    if ":" not in spec:
        raise BatchError(f"--preprocess {spec!r}: expected {', '.join(PREPROCESS_CHOICES)} or "
                         "package.module:callable")
    return _import_attr(spec, "--preprocess")


def _check_trusted_export(spec: str, trust_code: bool) -> None:
    """Refuses a .pt2 file unless ``trust_code``; warns when it is loaded."""
    if not trust_code:
        raise BatchError(
            f"--model {spec!r}: a torch.export (.pt2) file can run code when it is loaded "
            "(torch.export.load unpickles pickled weights, constants and sample inputs, loads "
            "AOTInductor libraries, and evaluates the graph's shape expressions with "
            f"sympy.sympify), so it is loaded only with {TRUST_FLAG}: pass it if you trust "
            "whoever wrote the file, or give the model as package.module:factory")
    import warnings

    warnings.warn(f"--model {spec!r}: loading a torch.export (.pt2) file with {TRUST_FLAG}: "
                  "torch.export.load runs code stored in the file", ModelCodeWarning, stacklevel=3)


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
    labels: str | None = None     # how the labels were obtained (written to the manifest)
    fingerprint_of: str | None = None    # what the fingerprint covers (written to the manifest)

    def __len__(self) -> int:
        return len(self.keys)


class _FolderReader:
    def __init__(self, paths: list[str], labels: list[int], max_pixels: int | None = MAX_PIXELS):
        self.paths, self.labels, self.max_pixels = paths, labels, max_pixels

    def read(self, i: int):
        import warnings

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
                      _ArrayReader(images, labels), class_names=names, preprocess=preprocess,
                      labels="the sample's labels", fingerprint_of="the sample's images and labels")


def _unpack_sample(sample):
    """(images, labels, preprocess) from the built-in sample, whatever container it is."""
    if isinstance(sample, dict):
        return (sample.get("images"), sample.get("labels"), sample.get("preprocess"))
    if isinstance(sample, tuple):
        items = list(sample) + [None] * (3 - len(sample))
        return items[0], items[1], items[2]
    return (getattr(sample, "images"), getattr(sample, "labels", None),
            getattr(sample, "preprocess", None))


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


def to_chw_float(img, preprocess: Callable | None = None) -> torch.Tensor:
    """One image as a (ch, H, W) floating point tensor.

    With ``preprocess``, its result (a tensor or array) is used. Otherwise integer
    images are scaled to [0, 1] (uint8 / 255, uint16 / 65535), (H, W) gets a channel
    dim and (H, W, ch) with ch in {1, 3, 4} becomes (ch, H, W). An image with a NaN or
    infinite value (after preprocessing) raises ValueError: it is skipped and reported,
    never explained.
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
    if t.is_floating_point():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            nan = int(torch.isnan(t).sum())
            raise ValueError(f"the image has {nan} NaN and {int((~finite).sum()) - nan} infinite "
                             "values (after preprocessing); not explained")
    return t.contiguous()
