"""The grid pointing game (Boehle, Fritz & Schiele, CoDA-Nets CVPR 2021 / B-cos CVPR 2022)
for CLEAR maps: in 2x2 mosaics of four confidently classified images of four different
predicted classes, each quadrant should be dominated by its own image's class.

Strong pixels of a mosaic: dominant response >= ``strong`` x the mosaic's maximum
(:func:`~clear_native.metrics.dominant_strong_mask`); visible pixels: the same at
``visible``. A quadrant's score is the share of its strong (visible) pixels whose dominant
class is the quadrant's class (chance: 25%); quadrants without such pixels are left out.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from clear_native.metrics._checks import _check_images
from clear_native.metrics.shares import dominant_strong_mask


@dataclass
class GridPointing:
    """Result of :func:`grid_pointing` (NaN without any scored quadrant).

    strong / visible: mean over quadrants (of all mosaics) of the share of the quadrant's
        strong / visible pixels dominated by its class.
    mosaics: number of mosaics; quadrants_strong / quadrants_visible: quadrants scored.
    plan: (mosaics, 4) image indices, quadrants top-left, top-right, bottom-left, bottom-right.
    classes: (mosaics, 4) their predicted classes.
    """

    strong: float
    visible: float
    mosaics: int
    quadrants_strong: int
    quadrants_visible: int
    plan: list[list[int]] = field(default_factory=list)
    classes: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def mosaic_plan(probs: torch.Tensor, *, min_confidence: float = 0.5,
                max_mosaics: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic choice of the mosaics' images from softmax ``probs`` (N, C).

    Images with max probability > ``min_confidence`` are queued per predicted class,
    most confident first; classes are ordered by their best confidence (then id). Each
    mosaic takes the next image of four consecutive classes (round-robin over the classes
    that still have images) until fewer than four classes are left or ``max_mosaics``.
    Returns (M, 4) image indices and (M, 4) classes (int64).
    """
    if probs.dim() != 2:
        raise ValueError(f"mosaic_plan: probs must be (N, C), got {tuple(probs.shape)}")
    conf, pred = probs.detach().cpu().double().max(1)
    queues: dict[int, list[int]] = {}
    for i in sorted(range(len(conf)), key=lambda i: (-float(conf[i]), i)):
        if conf[i] > min_confidence:
            queues.setdefault(int(pred[i]), []).append(i)
    order = list(queues)  # insertion order: best confidence first
    plan, pointer = [], 0
    while max_mosaics is None or len(plan) < max_mosaics:
        active = [c for c in order if queues[c]]
        if len(active) < 4:
            break
        start = pointer % len(active)
        chosen = (active[start:] + active[:start])[:4]
        plan.append([queues[c].pop(0) for c in chosen])
        pointer += 4
    idx = torch.tensor(plan, dtype=torch.int64).view(-1, 4)
    return idx, pred[idx.flatten()].view(-1, 4) if idx.numel() else idx.clone()


def make_mosaics(images: torch.Tensor, plan: torch.Tensor, *, downscale: bool = False) -> torch.Tensor:
    """(M, C_in, 2H, 2W) mosaics of (N, C_in, H, W) ``images`` per row of ``plan`` (M, 4):
    top-left, top-right, bottom-left, bottom-right; ``downscale``: each image halved first
    (area-averaged) so the mosaic keeps (about) the input size (2 (H // 2), 2 (W // 2))."""
    _check_images("make_mosaics", images)
    if plan.dim() != 2 or plan.shape[1] != 4:
        raise ValueError(f"make_mosaics: plan must be (M, 4), got {tuple(plan.shape)}")
    tiles = images[plan.flatten().to(images.device)]
    if downscale:
        h, w = images.shape[2] // 2, images.shape[3] // 2
        tiles = F.interpolate(tiles, size=(h, w), mode="area")
    t = tiles.view(plan.shape[0], 4, *tiles.shape[1:])
    top = torch.cat([t[:, 0], t[:, 1]], dim=3)
    bottom = torch.cat([t[:, 2], t[:, 3]], dim=3)
    return torch.cat([top, bottom], dim=2)


def quadrant_classes(quad_classes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(M, h, w) int64: each pixel's quadrant class, from (M, 4) ``quad_classes``; the
    quadrants split the mosaic at (h // 2, w // 2)."""
    rows = (torch.arange(h) >= h // 2).long().view(h, 1)
    cols = (torch.arange(w) >= w // 2).long().view(1, w)
    quad = (2 * rows + cols).expand(h, w)
    return quad_classes.cpu()[:, quad.flatten()].view(-1, h, w)


def pointing_shares(dominant_class: torch.Tensor, dominant_response: torch.Tensor, quad_classes: torch.Tensor,
                    rel: float) -> torch.Tensor:
    """(M, 4) float64: per mosaic and quadrant, the share of its pixels with dominant response
    >= ``rel`` x the mosaic's max (:func:`dominant_strong_mask`) whose dominant class is the
    quadrant's class (``quad_classes`` (M, 4)); NaN for a quadrant without such pixels."""
    m, h, w = dominant_class.shape
    if tuple(quad_classes.shape) != (m, 4):
        raise ValueError(f"pointing_shares: quad_classes must be (M, 4) = ({m}, 4), got {tuple(quad_classes.shape)}")
    mask = dominant_strong_mask(dominant_class.cpu(), dominant_response.detach().cpu(), rel)
    hit = mask & (dominant_class.cpu() == quadrant_classes(quad_classes, h, w))
    quad = (2 * (torch.arange(h) >= h // 2).long().view(h, 1) + (torch.arange(w) >= w // 2).long().view(1, w))
    onehot = F.one_hot(quad.flatten(), 4).double()  # (h w, 4)
    return (hit.flatten(1).double() @ onehot) / (mask.flatten(1).double() @ onehot)


def _explain_mosaics(model, explain, mosaics: torch.Tensor, classes: torch.Tensor):
    """Dominant class / response (M, 2H, 2W) of each mosaic over its own four classes
    (mosaics with the same class set explained together; the target, which must be among
    the classes, is the smallest of them: it does not change the dominance)."""
    dc = torch.empty(mosaics.shape[0], *mosaics.shape[2:], dtype=torch.int64)
    dr = torch.empty(mosaics.shape[0], *mosaics.shape[2:])
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(classes.tolist()):
        groups.setdefault(tuple(sorted(row)), []).append(i)
    for key, rows in groups.items():
        target = torch.full((len(rows),), key[0], dtype=torch.int64, device=mosaics.device)  # any of the four
        maps = explain(model, mosaics[rows], target=target, classes=list(key))
        dc[rows], dr[rows] = maps.dominant_class.cpu(), maps.dominant_response.detach().float().cpu()
    return dc, dr


@torch.no_grad()
def _probs(model, images, batch_size: int) -> torch.Tensor:
    return torch.cat([model(images[s:s + batch_size]).softmax(1).cpu()
                      for s in range(0, images.shape[0], batch_size)])


def grid_pointing(model: torch.nn.Module, explain: Callable[..., object], images: torch.Tensor, *,
                  min_confidence: float = 0.5, max_mosaics: int | None = None, downscale: bool = False,
                  strong: float = 0.2, visible: float = 0.05, batch_size: int = 64) -> GridPointing:
    """The grid pointing game on mosaics of ``images`` (N, C_in, H, W) (:func:`mosaic_plan`,
    :func:`make_mosaics`), each explained by ``explain(model, mosaics, classes=its four
    classes)``, scored by :func:`pointing_shares` at ``strong`` and ``visible``."""
    _check_images("grid_pointing", images)
    plan, classes = mosaic_plan(_probs(model, images, batch_size), min_confidence=min_confidence,
                                max_mosaics=max_mosaics)
    if plan.shape[0] == 0:
        return GridPointing(float("nan"), float("nan"), 0, 0, 0)
    mosaics = make_mosaics(images, plan, downscale=downscale)
    dc, dr = _explain_mosaics(model, explain, mosaics, classes)
    s, v = pointing_shares(dc, dr, classes, strong), pointing_shares(dc, dr, classes, visible)

    def mean(x):
        return float(x[~x.isnan()].mean()) if bool((~x.isnan()).any()) else float("nan")
    return GridPointing(mean(s), mean(v), int(plan.shape[0]), int((~s.isnan()).sum()), int((~v.isnan()).sum()),
                        plan.tolist(), classes.tolist())
