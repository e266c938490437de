"""Built-in classifiers: the paper's ALL-CNN-like network and its shipped weights.

The network follows Kumar, Wong & Taylor (2017): convolution / ReLU / max-pooling layers,
a last convolution with one kernel per class, then global average pooling, so that the
class maps ``z_L`` (N, C, 7, 7) are exactly what CLEAR projects back to the input.

Shipped weights live in ``clear_native/weights/<stem>.pt`` (a ``state_dict``), next to
``<stem>.sha256`` (``sha256sum`` format) and ``<stem>.json`` (the training log written by
``clear-native train``). :func:`load_pretrained` verifies the checksum before loading.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "AllCNN",
    "ModelSpec",
    "MODELS",
    "available_models",
    "build_model",
    "fold_batchnorm",
    "load_pretrained",
    "weights_path",
    "sha256_file",
    "mnist_allcnn",
    "fashion_mnist_allcnn",
]

log = logging.getLogger(__name__)


class AllCNN(nn.Module):
    """ALL-CNN-like classifier for 28x28 grey images (MNIST, Fashion-MNIST).

    Layers (input (N, 1, 28, 28)):

    ``features``: Conv 5x5 (16) - ReLU - MaxPool 2 -> (N, 16, 14, 14)
    - Conv 3x3 (32) - ReLU - MaxPool 2 -> (N, 32, 7, 7) - Conv 3x3 (64) - ReLU -> (N, 64, 7, 7)

    ``classifier``: Conv 1x1 with one kernel per class -> class maps (N, C, 7, 7);
    no ReLU after it, so a class map may be negative evidence.

    ``pool``: ``nn.AdaptiveAvgPool2d(1)`` then flatten -> logits (N, C).

    All convolutions are padded ("same"), so every feature map keeps its position on the
    input grid, which the deconvolutional back-projection relies on. 24,202 parameters
    for 10 classes.

    ``batch_norm=True`` inserts BatchNorm2d after each feature convolution; it is used for
    training only (faster, steadier convergence): :func:`fold_batchnorm` turns the trained
    network into the plain conv / ReLU / max-pool one above, which is what is shipped.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 batch_norm: bool = False) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        widths = [(in_channels, 16, 5), (16, 32, 3), (32, 64, 3)]
        for i, (cin, cout, k) in enumerate(widths):
            layers.append(nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        # The paper's last layer: one kernel per class, then global average pooling.
        self.classifier = nn.Conv2d(64, num_classes, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-class response maps z_L before pooling: (N, in_channels, H, W) -> (N, C, H/4, W/4)."""
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (N, in_channels, H, W) float -> (N, C)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        return torch.flatten(self.pool(self.class_maps(x)), 1)


@torch.no_grad()
def fold_batchnorm(model: AllCNN) -> AllCNN:
    """The equivalent plain :class:`AllCNN` (no BatchNorm) of an eval-mode ``batch_norm`` one.

    Each ``Conv -> BN`` pair becomes one convolution:
    ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``.
    """
    if not model.batch_norm:
        return model
    plain = AllCNN(model.num_classes, model.in_channels, batch_norm=False)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    targets = [m for m in plain.features if isinstance(m, nn.Conv2d)]
    for conv, bn, dst in zip(convs, bns, targets, strict=True):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        dst.weight.copy_(conv.weight * scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        dst.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    plain.classifier.load_state_dict(model.classifier.state_dict())
    return plain.to(next(model.parameters()).device).eval()


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: which architecture, which data set, which weight file."""

    name: str
    stem: str  # weight files are weights/<stem>.pt, .sha256, .json
    dataset: str  # name understood by clear_native.data.load_dataset / class_names
    num_classes: int = 10
    in_channels: int = 1


MODELS: dict[str, ModelSpec] = {
    "mnist": ModelSpec("mnist", "mnist_allcnn", "mnist"),
    "fashion-mnist": ModelSpec("fashion-mnist", "fashion_mnist_allcnn", "fashion-mnist"),
}


def _spec(name: str) -> ModelSpec:
    key = name.replace("_", "-").lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[key]


def build_model(name: str = "mnist", batch_norm: bool = False) -> AllCNN:
    """A freshly initialised (untrained) network for the built-in model ``name``."""
    spec = _spec(name)
    return AllCNN(num_classes=spec.num_classes, in_channels=spec.in_channels,
                  batch_norm=batch_norm)


def weights_path(name: str = "mnist") -> Path:
    """Path of the shipped ``.pt`` weight file of model ``name`` (may not exist)."""
    spec = _spec(name)
    return Path(str(resources.files("clear_native") / "weights" / f"{spec.stem}.pt"))


def available_models() -> list[str]:
    """Names of the built-in models whose weights are shipped with this installation."""
    return [n for n in MODELS if weights_path(n).is_file()]


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected_sha256(checksum_file: Path) -> str:
    if not checksum_file.is_file():
        raise FileNotFoundError(
            f"checksum file {checksum_file} not found; refusing to load unverified weights")
    text = checksum_file.read_text().split()
    if not text or len(text[0]) != 64:
        raise ValueError(f"checksum file {checksum_file} does not start with a SHA-256 hex digest")
    return text[0].lower()


def load_pretrained(
    name: str = "mnist",
    map_location: str | torch.device = "cpu",
    path: str | Path | None = None,
) -> AllCNN:
    """The built-in model ``name`` with its shipped weights, in eval mode.

    Args:
        name: a key of :data:`MODELS` (``"mnist"`` or ``"fashion-mnist"``).
        map_location: device to load the weights to.
        path: load this ``.pt`` file instead of the shipped one; its checksum is read from
            the ``.sha256`` file of the same stem beside it.

    Raises:
        FileNotFoundError: weights or checksum file missing.
        ValueError: the file's SHA-256 differs from the recorded one (corrupted download
            or edited file), or the state dict does not fit the architecture.
    """
    spec = _spec(name)
    pt = Path(path) if path is not None else weights_path(name)
    if not pt.is_file():
        raise FileNotFoundError(
            f"weights for model {spec.name!r} not found at {pt}; "
            f"train them with `clear-native train {spec.dataset}`")
    expected = _expected_sha256(pt.with_suffix(".sha256"))
    got = sha256_file(pt)
    if got != expected:
        raise ValueError(
            f"SHA-256 mismatch for {pt}: expected {expected}, got {got}; "
            "the weight file is corrupted or was modified")
    state = torch.load(pt, map_location=map_location, weights_only=True)
    model = build_model(name)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights in {pt} do not fit AllCNN for {spec.name!r}: {e}") from e
    log.debug("loaded %s (sha256 %s)", pt, got)
    return model.to(map_location).eval()


def mnist_allcnn() -> AllCNN:
    """Factory for ``--model clear_native.models:mnist_allcnn``: pretrained MNIST network."""
    return load_pretrained("mnist")


def fashion_mnist_allcnn() -> AllCNN:
    """Factory for ``--model clear_native.models:fashion_mnist_allcnn``."""
    return load_pretrained("fashion-mnist")
