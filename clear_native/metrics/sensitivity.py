"""Class sensitivity: does the dominant class of CLEAR maps follow the model's evidence?
The strong-pixel shares, the head randomisation and the causal check, combined by
:func:`class_sensitivity`."""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from clear_native.metrics._checks import _check_images, _check_maps, _check_shape, _mean_where
from clear_native.metrics.shares import dominant_strong_mask, strong_pixel_shares


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
        causal_effect_ci: [low, high] 95% percentile bootstrap interval of
            ``causal_effect``, resampling images (NaN, NaN without pairs).
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
    causal_effect_ci: list[float] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _batched_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, C) float64 logits of ``model`` on ``images``, in batches."""
    out = [model(images[s:s + batch_size]).double() for s in range(0, images.shape[0], batch_size)]
    if not out:
        raise ValueError("no images given")
    return torch.cat(out)


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
            "causal_pairs": int(scores.numel()), "causal_skipped": skipped,
            "causal_effect_ci": bootstrap_ci(img.cpu(), cls.cpu(), scores.cpu(), n, seed=seed)}


def bootstrap_ci(img: torch.Tensor, cls: torch.Tensor, scores: torch.Tensor, n: int, *,
                 resamples: int = 1000, level: float = 0.95, seed: int = 0) -> list[float]:
    """[low, high] percentile bootstrap interval of the causal effect, resampling images.

    ``img``, ``cls``, ``scores``: (P,) image index (< ``n``), class and score of each
    scored pair. Each resample draws ``n`` images with replacement and recomputes the
    effect as :func:`causal_check` does (mean over classes of the per-class mean score);
    resamples without any pair are left out. [NaN, NaN] without pairs.
    """
    if scores.numel() == 0 or n < 1:
        return [float("nan"), float("nan")]
    _, col = cls.unique(return_inverse=True)
    k = int(col.max()) + 1
    total = torch.zeros(n, k, dtype=torch.float64).index_put_((img, col), scores.double(), accumulate=True)
    count = torch.zeros(n, k, dtype=torch.float64).index_put_((img, col), torch.ones_like(scores, dtype=torch.float64),
                                                            accumulate=True)
    g = torch.Generator().manual_seed(seed)
    draw = torch.randint(n, (resamples, n), generator=g)
    weight = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, draw, torch.ones(resamples, n, dtype=torch.float64))
    num, per = weight @ count, weight @ total
    effect = (per / num).nansum(1) / (num > 0).sum(1)   # mean over the classes with pairs
    effect = effect[(num > 0).any(1)]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return effect.quantile(q).tolist()


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
