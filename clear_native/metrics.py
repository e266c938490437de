"""Quantitative evaluation of CLEAR maps (paper Table 1 and beyond).

Every function is batched on the device of its inputs and works for any model and
data set: it takes the model, preprocessed images (N, C_in, H, W), labels (N,) and
maps (N, H, W) computed by the caller (usually fields of a ``ClearMaps``), so the
explanation method is the caller's choice.

Conventions (documented choices; the paper gives none):
- "Strong features" of an image: pixels whose positive-focus response (the
  target class's map, ``target_response`` with ``target = labels``) is at least
  ``t * max`` of that image's positive map, for a relative threshold ``t``;
  images whose positive map has no positive value have no strong features.
- Removed pixels take ``background`` (for MNIST, the normalised value of a black
  pixel), in the model's input space, on every input channel.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

__all__ = [
    "StrongFeatureCurve", "strong_feature_accuracy", "strong_mask",
    "DeletionInsertion", "deletion_insertion",
    "dominance_agreement", "sanity_check", "accuracy",
    "ClassSensitivity", "class_sensitivity", "dominant_strong_mask",
    "strong_pixel_shares", "head_randomisation", "causal_check",
]


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 512) -> float:
    """Top-1 accuracy (in [0, 1]) of ``model`` on (N, C_in, H, W) images."""
    correct = 0
    for s in range(0, images.shape[0], batch_size):
        correct += int((model(images[s:s + batch_size]).argmax(1) == labels[s:s + batch_size]).sum())
    return correct / max(images.shape[0], 1)


def strong_mask(positive: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, H, W) bool: pixels whose positive map is >= threshold * its image's max (> 0)."""
    peak = positive.flatten(1).nan_to_num(nan=float("-inf")).amax(1).view(-1, 1, 1)
    return (positive >= threshold * peak) & (peak > 0) & (positive > 0)


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


def dominance_agreement(dominant_class: torch.Tensor, prediction: torch.Tensor, labels: torch.Tensor,
                        num_classes: int, dominant_response: torch.Tensor | None = None,
                        strong: torch.Tensor | None = None) -> dict:
    """CLEAR-specific statistics.

    Returns a dict with:
      - ``share_predicted``: per image, the share of (valid or ``strong``) pixels whose
        dominant class is the predicted class; its means over correctly and wrongly
        classified images;
      - ``wrong_region_confusion`` (C, C): for pixels whose dominant class differs from
        the prediction, counts of (predicted class, dominant class);
      - for misclassified images: the share of their pixels dominated by the TRUE class
        vs by the predicted one (the paper's "evidence for 5 inside a misread 0").
    """
    valid = dominant_class >= 0
    if dominant_response is not None:
        valid &= dominant_response > 0
    if strong is not None:
        valid &= strong
    cnt = valid.flatten(1).sum(1).clamp(min=1).float()
    is_pred = (dominant_class == prediction.view(-1, 1, 1)) & valid
    is_true = (dominant_class == labels.view(-1, 1, 1)) & valid
    share_pred = is_pred.flatten(1).sum(1) / cnt
    share_true = is_true.flatten(1).sum(1) / cnt
    correct = prediction == labels
    wrong_px = valid & ~is_pred
    pred_b = prediction.view(-1, 1, 1).expand_as(dominant_class)[wrong_px]
    dom_b = dominant_class[wrong_px]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=dominant_class.device)
    confusion.index_put_((pred_b, dom_b), torch.ones_like(dom_b), accumulate=True)

    def mean(x, m):
        return float(x[m].mean()) if bool(m.any()) else float("nan")

    return {
        "share_predicted": share_pred,
        "share_predicted_correct": mean(share_pred, correct),
        "share_predicted_wrong": mean(share_pred, ~correct),
        "wrong_true_class_share": mean(share_true, ~correct),
        "wrong_predicted_class_share": mean(share_pred, ~correct),
        "wrong_region_confusion": confusion.cpu(),
        "num_correct": int(correct.sum()), "num_wrong": int((~correct).sum()),
    }


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
    import copy

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


# --------------------------------------------------------------------------------------
# Class sensitivity: does the dominant class of CLEAR maps follow the model's evidence?
# --------------------------------------------------------------------------------------

@dataclass
class ClassSensitivity:
    """Result of :func:`class_sensitivity` (NaN where a mean has nothing to average).

    Strong-pixel shares (:func:`strong_pixel_shares`), means over images that have
    strong pixels:
        share_predicted_correct: correctly classified images, share of strong pixels
            dominated by the predicted (= true) class.
        share_true_wrong / share_predicted_wrong: misclassified images, share dominated
            by the true / by the predicted class.
        chance: 1 / num_classes.
        images_correct / images_wrong: images entering those means.
        images_without_strong: images left out (no strong pixel).
    Head randomisation (:func:`head_randomisation`; None when no ``explain`` was given):
        head_randomised_agreement: share of the original maps' strong pixels whose
            dominant class is unchanged after re-initialising the head (lower = the
            maps depend on the class head).
        head_randomised_module: name (in ``named_modules()``) of the module randomised.
    Causal check (:func:`causal_check`):
        causal_effect: mean over classes (that had pairs) of the per-class mean score.
        causal_effect_pairs_mean: plain mean of the scores over all pairs.
        causal_effect_per_class: (C,) per-class mean scores (NaN: class had no pair).
        causal_pairs: number of scored (image, class) pairs.
        causal_skipped: (image, class) candidates skipped because the strong pixels
            not dominated by the class were fewer than ``min_pixels``.
    strong_threshold: the relative threshold defining strong pixels.
    """

    share_predicted_correct: float
    share_true_wrong: float
    share_predicted_wrong: float
    chance: float
    images_correct: int
    images_wrong: int
    images_without_strong: int
    head_randomised_agreement: float | None
    head_randomised_module: str | None
    causal_effect: float
    causal_effect_pairs_mean: float
    causal_effect_per_class: list[float]
    causal_pairs: int
    causal_skipped: int
    strong_threshold: float

    def as_dict(self) -> dict:
        return asdict(self)


def dominant_strong_mask(dominant_class: torch.Tensor, dominant_response: torch.Tensor,
                         rel: float = 0.2) -> torch.Tensor:
    """(N, H, W) bool: the "strong pixels" of CLEAR maps.

    A pixel is strong when its ``dominant_response`` is > 0 and at least ``rel`` times
    its image's largest dominant response, and its ``dominant_class`` is >= 0. NaN is
    never strong; an image whose responses are all <= 0 (or NaN) has no strong pixel.
    """
    return strong_mask(dominant_response, rel) & (dominant_class >= 0)


def _check_images(fn: str, images: torch.Tensor) -> tuple[int, int, int]:
    if images.dim() != 4:
        raise ValueError(f"{fn}: images must be (N, C_in, H, W), got {tuple(images.shape)}")
    n, _, h, w = images.shape
    return n, h, w


def _check_shape(fn: str, name: str, t: torch.Tensor, expected: tuple, layout: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{fn}: {name} must be {layout} = {tuple(expected)}, got {tuple(t.shape)}")


def _check_maps(fn: str, dominant_class: torch.Tensor, dominant_response: torch.Tensor,
                expected: tuple | None = None) -> None:
    expected = tuple(dominant_class.shape) if expected is None else tuple(expected)
    if len(expected) != 3:
        raise ValueError(f"{fn}: dominant_class must be (N, H, W), got {tuple(dominant_class.shape)}")
    _check_shape(fn, "dominant_class", dominant_class, expected, "(N, H, W)")
    _check_shape(fn, "dominant_response", dominant_response, expected, "(N, H, W)")


def _mean_where(x: torch.Tensor, m: torch.Tensor) -> float:
    return float(x[m].mean()) if bool(m.any()) else float("nan")


@torch.no_grad()
def _batched_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, C) float64 logits of ``model`` on ``images``, in batches."""
    out = [model(images[s:s + batch_size]).double() for s in range(0, images.shape[0], batch_size)]
    if not out:
        raise ValueError("no images given")
    return torch.cat(out)


def strong_pixel_shares(dominant_class: torch.Tensor, dominant_response: torch.Tensor,
                        prediction: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                        strong: float = 0.2) -> dict:
    """Which classes dominate the strong pixels (:func:`dominant_strong_mask`).

    Args:
        dominant_class, dominant_response: (N, H, W) CLEAR maps.
        prediction, labels: (N,) predicted and true classes.
        num_classes: C (for the chance level 1 / C).
        strong: relative threshold of strong pixels.

    Returns a dict with the share fields of :class:`ClassSensitivity`: per image, the
    share of its strong pixels dominated by the predicted / true class, averaged over
    correct images (predicted) and over wrong images (true and predicted); images
    with no strong pixel are left out and counted in ``images_without_strong``.
    """
    _check_maps("strong_pixel_shares", dominant_class, dominant_response)
    n = dominant_class.shape[0]
    _check_shape("strong_pixel_shares", "prediction", prediction, (n,), "(N,)")
    _check_shape("strong_pixel_shares", "labels", labels, (n,), "(N,)")
    dev = dominant_class.device
    prediction, labels = prediction.to(dev), labels.to(dev)
    mask = dominant_strong_mask(dominant_class, dominant_response, strong)
    count = mask.flatten(1).sum(1)
    has = count > 0
    cnt = count.clamp(min=1).double()
    share_pred = ((dominant_class == prediction.view(-1, 1, 1)) & mask).flatten(1).sum(1) / cnt
    share_true = ((dominant_class == labels.view(-1, 1, 1)) & mask).flatten(1).sum(1) / cnt
    correct, wrong = (prediction == labels) & has, (prediction != labels) & has
    return {
        "share_predicted_correct": _mean_where(share_pred, correct),
        "share_true_wrong": _mean_where(share_true, wrong),
        "share_predicted_wrong": _mean_where(share_pred, wrong),
        "chance": 1.0 / num_classes,
        "images_correct": int(correct.sum()), "images_wrong": int(wrong.sum()),
        "images_without_strong": int((~has).sum()),
    }


def _head(model: torch.nn.Module) -> str:
    """Name of the last module (``named_modules()`` order) with parameters of its own."""
    names = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not names:
        raise ValueError("head_randomisation: the model has no module with parameters")
    return names[-1]


@torch.no_grad()
def _reinit_(module: torch.nn.Module, seed: int) -> None:
    """Re-initialise ``module``'s own parameters: kaiming_normal_ for weights (dim > 1),
    normal(std 0.1) for 1-D ones. Drawn on the CPU from a seeded generator (the same
    values on any device; the global RNG is not touched)."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters(recurse=False):
        fresh = torch.empty(p.shape, dtype=torch.float32)
        if p.dim() > 1:
            torch.nn.init.kaiming_normal_(fresh, generator=g)
        else:
            torch.nn.init.normal_(fresh, std=0.1, generator=g)
        p.copy_(fresh)


def head_randomisation(model: torch.nn.Module, explain: Callable[[torch.nn.Module], object], *,
                       strong: float = 0.2, seed: int = 0) -> dict:
    """Class agreement of CLEAR maps after randomising the model's class head.

    ``explain(model)`` returns maps (``dominant_class``, ``dominant_response``, (N, H, W))
    for fixed images. It is called on ``model`` and on a deep copy whose last module
    with parameters (the head) is re-initialised (see :func:`_reinit_`); the given
    model is untouched. Returns ``head_randomised_agreement``: the share of the
    original maps' strong pixels (pooled over images) whose dominant class is
    unchanged (NaN if there is none; lower = the maps depend on the head; 1.0 = they
    ignore it), and ``head_randomised_module``: the randomised module's name.
    """
    name = _head(model)
    base = explain(model)
    _check_maps("head_randomisation", base.dominant_class, base.dominant_response)
    work = copy.deepcopy(model)
    _reinit_(work.get_submodule(name), seed)
    rand = explain(work)
    _check_maps("head_randomisation (randomised model's maps)", rand.dominant_class,
                rand.dominant_response, base.dominant_class.shape)
    mask = dominant_strong_mask(base.dominant_class, base.dominant_response, strong)
    total = int(mask.sum())
    same = int(((rand.dominant_class.to(mask.device) == base.dominant_class) & mask).sum())
    return {"head_randomised_agreement": same / total if total else float("nan"),
            "head_randomised_module": name}


def _causal_pairs(dominant_class: torch.Tensor, mask: torch.Tensor, num_classes: int,
                  min_pixels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(image, class, k) of the scorable pairs and the number of skipped candidates.

    Candidates: classes dominating >= ``min_pixels`` strong pixels of an image. A
    candidate is scored when the other strong pixels number >= ``min_pixels`` too
    (k = the smaller count), skipped otherwise.
    """
    dom = dominant_class.where(mask, torch.full_like(dominant_class, -1)).flatten(1)
    if dom.numel() and int(dom.max()) >= num_classes:
        raise ValueError(f"causal_check: dominant_class has class {int(dom.max())} but the model "
                         f"has {num_classes} classes")
    counts = torch.zeros(dom.shape[0], num_classes + 1, dtype=torch.int64, device=dom.device)
    counts = counts.scatter_add_(1, dom + 1, torch.ones_like(dom))[:, 1:]
    rest = mask.flatten(1).sum(1, keepdim=True) - counts
    candidate = counts >= min_pixels
    ok = candidate & (rest >= min_pixels)
    img, cls = ok.nonzero(as_tuple=True)
    return img, cls, torch.minimum(counts, rest)[img, cls], int((candidate & ~ok).sum())


def _draw(allowed: torch.Tensor, keys: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(P, HW) bool: per row, the k allowed pixels with the smallest random keys."""
    rank = keys.masked_fill(~allowed, 2.0).argsort(1).argsort(1)
    return rank < k.view(-1, 1)


def _class_drop(delta: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """d_c = delta_c - mean over c' != c of delta_c', per row of (P, C) logit drops."""
    own = delta.gather(1, cls.view(-1, 1)).squeeze(1)
    return own - (delta.sum(1) - own) / (delta.shape[1] - 1)


def _pair_scores(model: torch.nn.Module, images: torch.Tensor, logits: torch.Tensor,
                 dominant_class: torch.Tensor, mask: torch.Tensor, img: torch.Tensor, cls: torch.Tensor,
                 k: torch.Tensor, background: float, generator: torch.Generator) -> torch.Tensor:
    """(P,) scores d_c(region sample) - d_c(complement sample) of a chunk of P pairs.

    ``logits`` (N, C) float64 of the unperturbed images; ``mask`` (N, H, W) strong
    pixels; ``img``, ``cls``, ``k`` (P,) from :func:`_causal_pairs`. Both samples use
    the same random keys: the two sets are disjoint, so the draws are independent.
    """
    p, (h, w) = img.shape[0], images.shape[2:]
    region = (dominant_class[img] == cls.view(-1, 1, 1)) & mask[img]
    rest = mask[img] & ~region
    keys = torch.rand(p, h * w, generator=generator).to(images.device)
    drops = []
    for allowed in (region, rest):
        sel = _draw(allowed.flatten(1), keys, k).view(p, 1, h, w)
        out = model(torch.where(sel, torch.tensor(background, dtype=images.dtype, device=images.device),
                                images[img]))
        drops.append(_class_drop(logits[img] - out.double(), cls))
    return drops[0] - drops[1]


@torch.no_grad()
def causal_check(model: torch.nn.Module, images: torch.Tensor, dominant_class: torch.Tensor,
                 dominant_response: torch.Tensor, *, strong: float = 0.2, min_pixels: int = 4,
                 background: float = 0.0, seed: int = 0, batch_size: int = 512,
                 logits: torch.Tensor | None = None) -> dict:
    """Does deleting the pixels the map assigns to class c hurt class c specifically?

    The share of strong pixels won by the prediction alone can be gamed (scale every
    class map by its logit and the prediction wins everywhere); this checks the
    assignment against the model. For each image and each class c dominating a set
    R_c of >= ``min_pixels`` strong pixels whose complement (the image's other strong
    pixels) also has >= ``min_pixels`` pixels, with k = min(|R_c|, |complement|), k
    pixels drawn at random from R_c are deleted (set to ``background`` on every input
    channel) and, separately, k pixels drawn at random from the complement. For a
    deletion set S, d_c(S) = [logit_c(x) - logit_c(x \\ S)] - mean over c' != c of
    [logit_c'(x) - logit_c'(x \\ S)]; the pair's score is d_c(region) - d_c(complement)
    (> 0: the map's pixels for c carry evidence for c, beyond as many other strong
    pixels). Scores are averaged per class, then over classes (``causal_effect``;
    also the plain mean over pairs).

    Why inside vs outside: a random baseline drawn from all strong pixels would be
    drawn mostly from R_c itself when c dominates most strong pixels, biasing the
    score towards 0 exactly for such maps. The equal-size design cannot score a class
    that dominates all but < ``min_pixels`` strong pixels (e.g. the gamed maps): such
    candidates are counted in ``causal_skipped`` so that case stays visible.

    Args:
        model: the classifier (eval mode), on the device of ``images``.
        images: (N, C_in, H, W) preprocessed inputs.
        dominant_class, dominant_response: (N, H, W) CLEAR maps.
        strong: relative threshold of strong pixels (:func:`dominant_strong_mask`).
        seed: seed of the CPU generator drawing the pixels (results are deterministic
            for fixed ``seed`` and ``batch_size``).
        batch_size: images per model call (each chunk of pairs takes two calls).
        logits: (N, C) the model's logits on ``images`` if already computed.

    Returns a dict with the ``causal_*`` fields of :class:`ClassSensitivity`.
    """
    n, h, w = _check_images("causal_check", images)
    _check_maps("causal_check", dominant_class, dominant_response, (n, h, w))
    if min_pixels < 1 or batch_size < 1:
        raise ValueError(f"causal_check: min_pixels and batch_size must be >= 1, got {min_pixels}, {batch_size}")
    logits = (_batched_logits(model, images, batch_size) if logits is None else logits).double()
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(f"causal_check: logits must be (N, C) with N = {n}, C >= 2, got {tuple(logits.shape)}")
    dominant_class, logits = dominant_class.to(images.device), logits.to(images.device)
    mask = dominant_strong_mask(dominant_class, dominant_response.to(images.device), strong)
    img, cls, k, skipped = _causal_pairs(dominant_class, mask, logits.shape[1], min_pixels)
    g = torch.Generator().manual_seed(seed)
    chunks = [_pair_scores(model, images, logits, dominant_class, mask, img[s:s + batch_size],
                           cls[s:s + batch_size], k[s:s + batch_size], background, g)
              for s in range(0, img.shape[0], batch_size)]
    scores = torch.cat(chunks) if chunks else logits.new_zeros(0)
    num = torch.zeros_like(logits[0]).index_add_(0, cls, torch.ones_like(scores))
    per_class = torch.zeros_like(logits[0]).index_add_(0, cls, scores) / num  # 0 / 0 -> NaN
    return {"causal_effect": _mean_where(per_class, num > 0),
            "causal_effect_pairs_mean": float(scores.mean()) if scores.numel() else float("nan"),
            "causal_effect_per_class": per_class.tolist(),
            "causal_pairs": int(scores.numel()), "causal_skipped": skipped}


def class_sensitivity(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, maps: object, *,
                      explain: Callable[[torch.nn.Module], object] | None = None, strong: float = 0.2,
                      min_pixels: int = 4, background: float = 0.0, seed: int = 0,
                      batch_size: int = 512) -> ClassSensitivity:
    """Whether the dominant class of CLEAR maps follows the model's evidence.

    Combines :func:`strong_pixel_shares`, :func:`head_randomisation` (only when
    ``explain`` is given) and :func:`causal_check` (see them for the definitions).

    Args:
        model: the classifier (eval mode), on the device of ``images``.
        images: (N, C_in, H, W) preprocessed inputs; labels: (N,) true classes.
        maps: object with ``dominant_class``, ``dominant_response`` (N, H, W) and
            ``prediction`` (N,), e.g. the ``ClearMaps`` of ``Clear(model)(images)``.
        explain: ``explain(model) -> maps`` for the same images (head randomisation);
            None leaves the ``head_randomised_*`` fields None.
        strong: relative threshold of strong pixels (:func:`dominant_strong_mask`).
        min_pixels, background, seed, batch_size: see :func:`causal_check`.
    """
    n, h, w = _check_images("class_sensitivity", images)
    missing = [a for a in ("dominant_class", "dominant_response", "prediction") if not hasattr(maps, a)]
    if missing:
        raise TypeError(f"class_sensitivity: maps lacks {', '.join(missing)}")
    _check_maps("class_sensitivity", maps.dominant_class, maps.dominant_response, (n, h, w))
    _check_shape("class_sensitivity", "labels", labels, (n,), "(N,)")
    _check_shape("class_sensitivity", "maps.prediction", maps.prediction, (n,), "(N,)")
    logits = _batched_logits(model, images, batch_size)
    shares = strong_pixel_shares(maps.dominant_class, maps.dominant_response, maps.prediction, labels,
                                 num_classes=logits.shape[1], strong=strong)
    head = ({"head_randomised_agreement": None, "head_randomised_module": None} if explain is None
            else head_randomisation(model, explain, strong=strong, seed=seed))
    causal = causal_check(model, images, maps.dominant_class, maps.dominant_response, strong=strong,
                          min_pixels=min_pixels, background=background, seed=seed,
                          batch_size=batch_size, logits=logits)
    return ClassSensitivity(**shares, **head, **causal, strong_threshold=float(strong))
