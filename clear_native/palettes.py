"""Colour dictionaries F(class) for CLEAR maps (paper eq. 6: H = F(class), S = 1).

A palette is a ``(P, 3)`` uint8 tensor of RGB colours indexed by class id. The
renderer draws class ``c`` as ``palette[c] * V`` (V = normalised response), so
a palette entry is the colour of the class at full response.

Stability across a data set: every palette here is a fixed function of the class
id (and of the number of classes for :func:`get_palette`'s ``"auto"`` choice),
never of the classes present in a batch, so class 7 has the same colour in every
figure of a data set. The one exception is :func:`top_k_palette`, which greys out
the classes that are rare *in the maps given*; the kept classes keep their
own colours.

Palettes:
    ``"paper"``: the paper's 10-colour dictionary (classes 0-9); the default for
        C <= 10.
    ``"golden"``: fully saturated hues spaced by the golden ratio
        (hue_c = frac(c * 0.618034)), any number of classes; the default for C > 10.
    ``"okabe_ito"``: Okabe & Ito's colour-blind-safe set (7 colours: their 8
        without black, which would vanish on the black background).
    ``"tol_bright"`` (7), ``"tol_muted"`` (9): Paul Tol's colour-blind-safe
        qualitative schemes.
"""
from __future__ import annotations

import colorsys
from typing import Iterable, Sequence

import torch

GOLDEN_RATIO_CONJUGATE = 0.6180339887498949

PAPER = [
    (255, 0, 0), (255, 120, 0), (170, 255, 0), (0, 255, 0), (0, 255, 169),
    (0, 169, 255), (0, 0, 255), (170, 0, 255), (255, 0, 169), (255, 215, 0),
]
OKABE_ITO = [
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167),
]
TOL_BRIGHT = [
    (0x44, 0x77, 0xAA), (0x66, 0xCC, 0xEE), (0x22, 0x88, 0x33), (0xCC, 0xBB, 0x44),
    (0xEE, 0x66, 0x77), (0xAA, 0x33, 0x77), (0xBB, 0xBB, 0xBB),
]
TOL_MUTED = [
    (0xCC, 0x66, 0x77), (0x33, 0x22, 0x88), (0xDD, 0xCC, 0x77), (0x11, 0x77, 0x33),
    (0x88, 0xCC, 0xEE), (0x88, 0x22, 0x55), (0x44, 0xAA, 0x99), (0x99, 0x99, 0x33),
    (0xAA, 0x44, 0x99),
]
OTHER = (128, 128, 128)  # "other" classes of top_k_palette
BINARY = [(255, 0, 0), (0, 0, 255)]  # for / against map: positive focus wins / another class wins

_FIXED = {"paper": PAPER, "okabe_ito": OKABE_ITO, "tol_bright": TOL_BRIGHT, "tol_muted": TOL_MUTED}
NAMES = ("auto", "golden", *_FIXED)


def golden_palette(num_classes: int, *, offset: float = 0.0) -> torch.Tensor:
    """``(num_classes, 3)`` uint8: class ``c`` gets hue ``frac(offset + c * 0.618...)``
    at S = V = 1. Consecutive classes get far-apart hues, and class ``c``'s colour
    does not depend on ``num_classes``."""
    if num_classes < 0:
        raise ValueError(f"golden_palette: num_classes must be >= 0, got {num_classes}")
    rows = []
    for c in range(num_classes):
        h = (offset + c * GOLDEN_RATIO_CONJUGATE) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 1.0, 1.0)
        rows.append((round(r * 255), round(g * 255), round(b * 255)))
    return torch.tensor(rows, dtype=torch.uint8).reshape(num_classes, 3)


def as_palette(colours) -> torch.Tensor:
    """A ``(P, 3)`` uint8 tensor from RGB triples (0-255 ints, or 0-1 floats) or a tensor."""
    t = torch.as_tensor(colours)
    if t.dim() != 2 or t.shape[1] != 3:
        raise ValueError(f"palette must be (P, 3) RGB colours, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t
    if t.is_floating_point():
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError("palette: float colours must lie in [0, 1]")
        return (t.double() * 255).round().to(torch.uint8)
    if t.numel() and (t.min() < 0 or t.max() > 255):
        raise ValueError("palette: integer colours must lie in [0, 255]")
    return t.to(torch.uint8)


def get_palette(num_classes: int, name: str = "auto") -> torch.Tensor:
    """The ``(num_classes, 3)`` uint8 palette called ``name`` (see the module doc).

    ``"auto"``: the paper's colours for ``num_classes <= 10``, golden-ratio hues above.
    A fixed palette with fewer colours than classes is an error.
    """
    if name == "auto":
        name = "paper" if num_classes <= len(PAPER) else "golden"
    if name == "golden":
        return golden_palette(num_classes)
    if name not in _FIXED:
        raise ValueError(f"unknown palette {name!r}; expected one of {', '.join(NAMES)}")
    colours = _FIXED[name]
    if num_classes > len(colours):
        raise ValueError(
            f"palette {name!r} has {len(colours)} colours, but {num_classes} classes need one each; "
            "use 'golden' (any number of classes) or top_k to group the rest as 'other'")
    return torch.tensor(colours[:num_classes], dtype=torch.uint8).reshape(num_classes, 3)


def class_shares(classes: torch.Tensor, num_classes: int, mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """``(N, num_classes)`` float: share of each image's pixels that each class
    dominates. Only pixels where ``mask`` (same shape as ``classes``) is true count,
    e.g. ``dominant_response > 0``: the pixels a CLEAR map colours; pixels of
    class -1 count in the denominator."""
    n = classes.shape[0]
    flat = classes.reshape(n, -1)
    keep = torch.ones_like(flat, dtype=torch.bool) if mask is None else mask.reshape(n, -1).to(flat.device)
    valid = (flat >= 0) & (flat < num_classes) & keep
    idx = torch.where(valid, flat, torch.full_like(flat, num_classes))
    counts = torch.zeros(n, num_classes + 1, dtype=torch.float64, device=classes.device)
    counts.scatter_add_(1, idx, keep.to(torch.float64))
    total = counts.sum(1, keepdim=True).clamp(min=1)
    return (counts[:, :num_classes] / total).to(torch.float32)


def top_k_classes(classes: torch.Tensor, num_classes: int, k: int) -> list[int]:
    """The ``k`` classes that dominate the most pixels of ``classes`` (all images
    together), most frequent first; ties to the lower class id; only classes present."""
    flat = classes.reshape(-1)
    flat = flat[(flat >= 0) & (flat < num_classes)]
    counts = torch.bincount(flat.cpu(), minlength=num_classes)
    order = sorted(range(num_classes), key=lambda c: (-int(counts[c]), c))
    return [c for c in order[:k] if counts[c] > 0]


def top_k_palette(palette: torch.Tensor, keep: Iterable[int], other: Sequence[int] = OTHER
                  ) -> torch.Tensor:
    """``palette`` with every class not in ``keep`` drawn in the ``other`` colour (grey)."""
    out = torch.empty_like(palette)
    out[:] = torch.tensor(other, dtype=torch.uint8)
    keep = list(keep)
    if keep:
        idx = torch.tensor(keep, dtype=torch.long)
        out[idx] = palette[idx]
    return out
