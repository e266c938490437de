"""Sanity checks of CLEAR maps beyond the paper (PAPER.md, "Beyond the paper").

- :func:`data_randomisation` (Adebayo et al. 2018): do the maps of different images, of
  noise and of a blank image differ? (Spearman rho of the dominant responses.)
- :func:`model_randomisation`: do the maps change when the head, then the layers below
  it top-down, are re-initialised?
- :func:`grid_pointing` (Boehle et al. 2021 / 2022, in :mod:`~clear_native.metrics.pointing`):
  in 2x2 mosaics of four confidently classified images of four classes, is each
  quadrant dominated by its own class?
- :func:`prediction_leads`: is the prediction the class with the most coloured pixels?
- the class-sensitivity share and the causal check of
  :func:`~clear_native.metrics.class_sensitivity`, with a bootstrap interval.

Every check is model- and method-agnostic: it takes maps computed by the caller or an
``explain(model, images, target=None, classes=None) -> maps`` callable (maps: an object
with ``dominant_class``, ``dominant_response`` (N, H, W), ``target_response`` (N, H, W),
``prediction`` (N,) and, for the class-map check, ``class_maps`` (N, C', H, W) and
``classes`` (None, (C',) or (N, C') global ids, -1 = padding); :func:`clear_explain` makes
one from :class:`clear_native.Clear`). :func:`~clear_native.metrics.checklist.sanity_report`
runs them all for one configuration; ``THRESHOLDS`` and ``passes`` (same module) say which
targets a row meets.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clear_native.explain import Clear
from clear_native.metrics._checks import _check_images, _check_maps
from clear_native.metrics.sensitivity import _head, _reinit_
from clear_native.metrics.shares import coloured_mask

Explain = Callable[..., object]


def clear_explain(method: str, *, classes=None, keep_class_maps: bool = True, **kwargs) -> Explain:
    """``explain(model, images, target=None, classes=<default>)`` running
    ``clear_native.Clear(model, method, **kwargs)``; ``classes`` is the default class set
    (None: all; int k: each image's top-k)."""
    default = classes

    def explain(model, images, target=None, classes=default):
        return Clear(model, method, **kwargs)(images, target, classes=classes, keep_class_maps=keep_class_maps)
    return explain


# -- rank correlation -----------------------------------------------------------------------

def rank_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, P) float64: per row, the average ranks of ``x`` (N, P) (ties share their mean
    rank; NaN ranks lowest), centred and scaled to unit norm (a constant row is all 0), so
    that the Spearman rho of rows i, j is ``r[i] @ r[j]``."""
    x = x.detach().double().nan_to_num(nan=float("-inf")).cpu()
    n, p = x.shape
    s, order = x.sort(1)
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    gid = (new.cumsum(1) - 1 + torch.arange(n).view(-1, 1) * p).flatten()
    pos = torch.arange(p, dtype=torch.float64).repeat(n)
    mean = torch.zeros(n * p, dtype=torch.float64).scatter_reduce(0, gid, pos, "mean", include_self=False)
    r = torch.empty_like(s).scatter_(1, order, mean[gid].view(n, p))
    r = r - r.mean(1, keepdim=True)
    return r / r.norm(dim=1, keepdim=True).clamp(min=1e-12)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) Spearman rho of the rows of (N, ...) tensors ``a`` and ``b`` (tie-aware)."""
    return (rank_rows(a.flatten(1)) * rank_rows(b.flatten(1))).sum(1)


def _mean_off_diagonal(r: torch.Tensor) -> tuple[float, int]:
    """Mean rho over the pairs i < j of the rows of ranked ``r`` (N, P), and the pair count."""
    n = r.shape[0]
    if n < 2:
        return float("nan"), 0
    iu = torch.triu_indices(n, n, 1)
    return float((r @ r.T)[iu[0], iu[1]].mean()), n * (n - 1) // 2


def _cross_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean rho over all (row of ``a``, row of ``b``) pairs of (N, ...) / (M, ...) maps."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return float("nan")
    return float((rank_rows(a.flatten(1)) @ rank_rows(b.flatten(1)).T).mean())


def fine_detail(maps: torch.Tensor, box: int = 33, reference: int = 224) -> torch.Tensor:
    """(N, H, W) ``maps`` minus their box blur; the box is ``box`` px at ``reference`` px
    image size, scaled to min(H, W) (odd, >= 3)."""
    k = max(3, int(round(box * min(maps.shape[-2:]) / reference)) | 1)
    x = maps.detach().float().nan_to_num(0.0).unsqueeze(1)
    return (x - F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)).squeeze(1)


# -- a. data randomisation ------------------------------------------------------------------

@dataclass
class DataRandomisation:
    """Result of :func:`data_randomisation`: mean Spearman rho of ``dominant_response``
    (NaN where there was nothing to compare; lower = the maps depend more on the image).

    image_image: over all pairs of different images (``image_pairs`` pairs).
    image_noise / image_constant: each image's map against each noise / constant image's map.
    class_maps: per class id, over the pairs of images whose class tables both hold it
        (``class_map_pairs`` (pair, class) entries); None without class maps.
    detail_image_image / detail_image_noise: the same on :func:`fine_detail` (None unless asked).
    images: N.
    """

    image_image: float
    image_noise: float
    image_constant: float
    class_maps: float | None
    image_pairs: int
    class_map_pairs: int
    detail_image_image: float | None
    detail_image_noise: float | None
    images: int


def reference_images(shape: Sequence[int], mean: Sequence[float], std: Sequence[float], *,
                     noise: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images (noise, C_in, H, W), N(0, 1) in the normalised input space, and one
    constant image (1, C_in, H, W), the normalised value of grey 0.5: ``(0.5 - mean) / std``
    per channel (``mean``, ``std``: per-channel normalisation, length C_in or 1)."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    if m.shape[0] not in (1, c) or s.shape[0] not in (1, c):
        raise ValueError(f"reference_images: mean and std need 1 or {c} values, got {m.shape[0]} and {s.shape[0]}")
    constant = ((0.5 - m) / s).expand(c, h, w).unsqueeze(0).clone()
    return torch.randn(noise, c, h, w, generator=g), constant


def _class_table(maps) -> torch.Tensor:
    """(N, C') int64 global class ids of ``maps.class_maps`` (-1 = padding)."""
    n, k = maps.class_maps.shape[:2]
    table = getattr(maps, "classes", None)
    if table is None:
        return torch.arange(k).expand(n, k)
    table = torch.as_tensor(table).cpu()
    return table.expand(n, k) if table.dim() == 1 else table


def class_map_rho(maps) -> tuple[float, int]:
    """Mean rho between class maps of the same class id in different images, and the
    number of (image pair, class) entries (the mean is over these entries)."""
    table, cm = _class_table(maps), maps.class_maps.detach().cpu()
    total, count = 0.0, 0
    for c in table[table >= 0].unique().tolist():
        img, col = (table == c).nonzero(as_tuple=True)
        if img.numel() < 2:
            continue
        r = rank_rows(cm[img, col].flatten(1))
        gram = r @ r.T
        pairs = img.numel() * (img.numel() - 1) // 2
        total += float((gram.sum() - gram.diagonal().sum()) / 2)
        count += pairs
    return (total / count if count else float("nan")), count


def data_randomisation(maps, noise_maps=None, constant_maps=None, *, detail: bool = False) -> DataRandomisation:
    """Data randomisation check on maps the caller computed.

    Args:
        maps: the images' maps (``dominant_response`` (N, H, W); ``class_maps`` (N, C', H, W)
            and ``classes`` optional, for :func:`class_map_rho`).
        noise_maps, constant_maps: maps of noise / constant images (same H, W; any count),
            e.g. of :func:`reference_images` through the same explainer; None: NaN.
        detail: also compare the :func:`fine_detail` of the maps.
    """
    resp = maps.dominant_response
    if resp.dim() != 3:
        raise ValueError(f"data_randomisation: dominant_response must be (N, H, W), got {tuple(resp.shape)}")
    for name, ref in (("noise_maps", noise_maps), ("constant_maps", constant_maps)):
        if ref is not None and tuple(ref.dominant_response.shape[1:]) != tuple(resp.shape[1:]):
            raise ValueError(f"data_randomisation: {name} must be (M, {resp.shape[1]}, {resp.shape[2]}), "
                             f"got {tuple(ref.dominant_response.shape)}")
    image_image, pairs = _mean_off_diagonal(rank_rows(resp.flatten(1)))
    noise = _cross_mean(resp, noise_maps.dominant_response) if noise_maps is not None else float("nan")
    const = _cross_mean(resp, constant_maps.dominant_response) if constant_maps is not None else float("nan")
    cls_rho, cls_pairs = (class_map_rho(maps) if getattr(maps, "class_maps", None) is not None
                          else (None, 0))
    d_ii = d_in = None
    if detail:
        d_ii = _mean_off_diagonal(rank_rows(fine_detail(resp).flatten(1)))[0]
        d_in = (_cross_mean(fine_detail(resp), fine_detail(noise_maps.dominant_response))
                if noise_maps is not None else float("nan"))
    return DataRandomisation(image_image, noise, const, cls_rho, pairs, cls_pairs, d_ii, d_in, resp.shape[0])


# -- b. model randomisation -----------------------------------------------------------------

@dataclass
class ModelRandomisation:
    """Result of :func:`model_randomisation`. ``steps``: one dict per step (cumulative),
    ``randomised`` (the module names re-initialised at that step), ``spearman`` (mean rho
    of ``dominant_response`` against the original maps), ``class_agreement`` (share of
    pixels whose dominant class is unchanged), ``predicted_map_spearman`` (rho of the
    original prediction's map, ``target_response`` with target = that prediction). The
    first step is the head alone (``head_*``); ``final_*`` = the last step."""

    head_module: str
    head_spearman: float
    head_class_agreement: float
    head_predicted_map_spearman: float
    final_spearman: float
    final_class_agreement: float
    steps: list[dict] = field(default_factory=list)


def layer_groups(model: torch.nn.Module, depth: int = 2) -> list[list[str]]:
    """Modules with parameters of their own, grouped by the first ``depth`` parts of their
    name (``_blocks.15._bn1`` -> ``_blocks.15``), top (output side) first."""
    groups: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            groups.setdefault(".".join(name.split(".")[:depth]), []).append(name)
    return [groups[k] for k in reversed(groups)]


def _explain_like(explain, model, images, base):
    """Maps of ``images`` under ``model`` over the classes of ``base`` with target = its
    prediction: one call, or one call per image when ``base.classes`` is a per-image (N, k)
    table (top-k), so that the same classes compete as in ``base``."""
    table = getattr(base, "classes", None)
    if table is None or table.dim() != 2:
        return explain(model, images, target=base.prediction, classes=None if table is None else table.tolist())
    parts = [explain(model, images[i:i + 1], target=base.prediction[i:i + 1],
                     classes=[c for c in table[i].tolist() if c >= 0]) for i in range(images.shape[0])]
    return type("Maps", (), {f: torch.cat([getattr(p, f) for p in parts]) for f in
                             ("dominant_class", "dominant_response", "target_response")})


def _compare(base, maps) -> dict:
    agree = (base.dominant_class.cpu() == maps.dominant_class.cpu()).double().mean()
    return {"spearman": float(spearman_rows(base.dominant_response, maps.dominant_response).mean()),
            "class_agreement": float(agree),
            "predicted_map_spearman": float(spearman_rows(base.target_response, maps.target_response).mean())}


def model_randomisation(model: torch.nn.Module, explain: Explain, images: torch.Tensor, *,
                        max_steps: int | None = None, depth: int = 2, seed: int = 0,
                        base=None) -> ModelRandomisation:
    """Cascading model randomisation on a deep copy (``model`` untouched).

    Step 1 re-initialises the head alone (the last module with parameters; weights
    kaiming-normal, 1-D parameters N(0, 0.1), from a seeded CPU generator); each further
    step adds the next group of :func:`layer_groups`, top-down, up to ``max_steps`` steps.
    After each step the copy's maps over the same classes as ``base`` (default
    ``explain(model, images)``), with target = its prediction (:func:`_explain_like`), are
    compared with ``base`` by :func:`_compare`.
    """
    _check_images("model_randomisation", images)
    base = explain(model, images) if base is None else base
    _check_maps("model_randomisation", base.dominant_class, base.dominant_response)
    head = _head(model)
    plan = [[head]] + [[n for n in g if n != head] for g in layer_groups(model, depth)]
    plan = [p for p in plan if p][:max_steps]
    work, steps = copy.deepcopy(model), []
    for k, names in enumerate(plan):
        for name in names:
            _reinit_(work.get_submodule(name), seed + k)
        steps.append({"randomised": ",".join(names), **_compare(base, _explain_like(explain, work, images, base))})
    h, f = steps[0], steps[-1]
    return ModelRandomisation(head, h["spearman"], h["class_agreement"], h["predicted_map_spearman"],
                              f["spearman"], f["class_agreement"], steps)


# -- d. the prediction leads ----------------------------------------------------------------

def leading_class(dominant_class: torch.Tensor, dominant_response: torch.Tensor) -> torch.Tensor:
    """(N,) int64: per image, the class with the most coloured pixels
    (:func:`~clear_native.metrics.coloured_mask`; ties: the smallest id), -1 without any."""
    dc = dominant_class.where(coloured_mask(dominant_class, dominant_response),
                              torch.full_like(dominant_class, -1)).flatten(1).cpu()
    top = int(dc.max()) + 2 if dc.numel() else 1
    counts = torch.zeros(dc.shape[0], top, dtype=torch.int64).scatter_add_(1, dc + 1, torch.ones_like(dc))[:, 1:]
    if counts.shape[1] == 0:
        return torch.full((dc.shape[0],), -1, dtype=torch.int64)
    best, idx = counts.max(1)
    return torch.where(best > 0, idx, torch.full_like(idx, -1))


def prediction_leads(dominant_class: torch.Tensor, dominant_response: torch.Tensor, prediction: torch.Tensor,
                     labels: torch.Tensor | None = None) -> tuple[float, int]:
    """Share of the correctly classified images (``labels == prediction``; without labels,
    all) whose :func:`leading_class` is the prediction, and the number of such images."""
    _check_maps("prediction_leads", dominant_class, dominant_response)
    prediction = prediction.cpu()
    correct = torch.ones_like(prediction, dtype=torch.bool) if labels is None else labels.cpu() == prediction
    n = int(correct.sum())
    lead = leading_class(dominant_class, dominant_response) == prediction
    return (float(lead[correct].double().mean()) if n else float("nan")), n
