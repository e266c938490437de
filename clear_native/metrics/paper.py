"""The paper's Table 1 (accuracy with only the strong features kept / removed), deletion /
insertion curves with their baselines, and the cascading randomisation sanity check."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from clear_native.metrics.shares import strong_mask


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 512) -> float:
    """Top-1 accuracy (in [0, 1]) of ``model`` on (N, C_in, H, W) images."""
    correct = 0
    for s in range(0, images.shape[0], batch_size):
        correct += int((model(images[s:s + batch_size]).argmax(1) == labels[s:s + batch_size]).sum())
    return correct / max(images.shape[0], 1)


@dataclass
class StrongFeatureCurve:
    """Accuracy with only the strong features kept / with them removed, per threshold."""

    thresholds: list[float]
    full: float
    kept: list[float]
    removed: list[float]
    strong_share: list[float]  # mean share of pixels that are "strong"
    paper: dict = field(default_factory=lambda: {"full": 99.26, "kept": 79.89, "removed": 43.45})

    def closest_to_paper(self) -> dict:
        """The threshold whose (kept, removed) accuracies are nearest the paper's (in %)."""
        best = min(range(len(self.thresholds)), key=lambda i: (
            (100 * self.kept[i] - self.paper["kept"]) ** 2 + (100 * self.removed[i] - self.paper["removed"]) ** 2))
        return {"threshold": self.thresholds[best], "full": self.full, "kept": self.kept[best],
                "removed": self.removed[best], "strong_share": self.strong_share[best]}

    def as_rows(self) -> list[dict]:
        return [{"threshold": t, "kept": k, "removed": r, "strong_share": s}
                for t, k, r, s in zip(self.thresholds, self.kept, self.removed, self.strong_share)]


@torch.no_grad()
def strong_feature_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            positive: torch.Tensor, *, thresholds: Sequence[float] = (
                                0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                            background: float = 0.0, batch_size: int = 512) -> StrongFeatureCurve:
    """The paper's Table 1 over a range of thresholds.

    Args:
        model: the classifier (eval mode).
        images: (N, C_in, H, W) preprocessed inputs; labels: (N,) true classes.
        positive: (N, H, W) positive focus of the true class (``target_response``
            of maps computed with ``target=labels``).
        thresholds: relative thresholds t (see :func:`strong_mask`).
        background: value written into removed pixels (model input space).
    """
    if positive.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"strong_feature_accuracy: positive must be (N, H, W) = "
                         f"{(images.shape[0], *images.shape[2:])}, got {tuple(positive.shape)}")
    full = accuracy(model, images, labels, batch_size)
    kept, removed, share = [], [], []
    bg = torch.full_like(images, background)
    for t in thresholds:
        mask = strong_mask(positive, float(t)).unsqueeze(1)
        kept.append(accuracy(model, torch.where(mask, images, bg), labels, batch_size))
        removed.append(accuracy(model, torch.where(mask, bg, images), labels, batch_size))
        share.append(float(mask.float().mean()))
    return StrongFeatureCurve(list(map(float, thresholds)), full, kept, removed, share)


@dataclass
class DeletionInsertion:
    """Deletion / insertion curves (probability of the class vs fraction of pixels) and AUCs."""

    fractions: list[float]
    deletion: list[float]
    insertion: list[float]

    @property
    def deletion_auc(self) -> float:
        return _auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> float:
        return _auc(self.fractions, self.insertion)


def _auc(x: Sequence[float], y: Sequence[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


@torch.no_grad()
def deletion_insertion(model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor,
                       saliency: torch.Tensor, *, steps: int = 20, background: float = 0.0,
                       batch_size: int = 512) -> DeletionInsertion:
    """Deletion and insertion curves (Petsiuk et al. 2018), batched.

    Pixels are ranked by ``saliency`` (N, H, W) (higher first; NaN last). Deletion
    replaces the top fraction by ``background`` and tracks the softmax
    probability of ``classes`` (N,); insertion starts from the background and
    inserts the top fraction. Lower deletion AUC / higher insertion AUC = better.
    """
    n, _, h, w = images.shape
    if saliency.shape != (n, h, w):
        raise ValueError(f"deletion_insertion: saliency must be (N, H, W) = {(n, h, w)}, got {tuple(saliency.shape)}")
    order = saliency.flatten(1).nan_to_num(nan=float("-inf")).argsort(1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    bg = torch.full_like(images, background)
    fractions, dele, ins = [], [], []
    for k in range(steps + 1):
        frac = k / steps
        top = rank < round(frac * h * w)
        p_del, p_ins = [], []
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            idx = classes[sl].view(-1, 1)
            p_del.append(model(torch.where(top[sl], bg[sl], images[sl])).softmax(1).gather(1, idx))
            p_ins.append(model(torch.where(top[sl], images[sl], bg[sl])).softmax(1).gather(1, idx))
        fractions.append(frac)
        dele.append(float(torch.cat(p_del).mean()))
        ins.append(float(torch.cat(p_ins).mean()))
    return DeletionInsertion(fractions, dele, ins)


def random_saliency(shape: Sequence[int], seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """A random pixel order (the baseline of deletion / insertion)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=g).to(device)


def gradient_saliency(model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Plain gradient heatmap: |d logit_class / d input| summed over channels, (N, H, W)."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), x)
    return grad.abs().sum(1)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman rank correlation of (N, P) tensors (NaN -> lowest)."""
    def ranks(x):
        x = x.nan_to_num(nan=float("-inf"))
        r = torch.empty_like(x)
        r.scatter_(1, x.argsort(1), torch.arange(x.shape[1], dtype=x.dtype, device=x.device).expand_as(x))
        return r - r.mean(1, keepdim=True)
    ra, rb = ranks(a.double()), ranks(b.double())
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)


def sanity_check(model: torch.nn.Module, explain: Callable[[torch.nn.Module], object],
                 *, seed: int = 0) -> list[dict]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    ``explain(model)`` returns maps (an object with ``dominant_class`` and
    ``dominant_response`` (N, H, W)) for fixed images. Starting from the top
    (output) layer, the parameters of one more layer are re-initialised at each
    step (on a deep copy; the given model is untouched) and the maps recomputed.
    Returns one row per step: the layer randomised, the Spearman correlation of
    the dominant responses and the share of pixels whose dominant class is
    unchanged, both against the original maps (1.0 = identical; a sane method
    drops as layers are randomised).
    """
    base = explain(model)
    work = copy.deepcopy(model)
    layers = [(name, m) for name, m in work.named_modules()
              if any(True for _ in m.parameters(recurse=False))]
    torch.manual_seed(seed)
    rows = [{"randomised": "none", "spearman": 1.0, "class_agreement": 1.0}]
    for name, module in reversed(layers):
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                if p.dim() > 1:
                    torch.nn.init.kaiming_normal_(p)
                else:
                    torch.nn.init.normal_(p, std=0.1)
        maps = explain(work)
        rho = _spearman(base.dominant_response.flatten(1), maps.dominant_response.flatten(1))
        agree = (base.dominant_class == maps.dominant_class).float().mean()
        rows.append({"randomised": name, "spearman": float(rho.mean()), "class_agreement": float(agree)})
    return rows
