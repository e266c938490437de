"""Fused per-class response projection: features -> full-resolution dominance."""
from __future__ import annotations

import torch

from clear_native.dominance import Dominance


def project_dominance(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      *, size, mode: str = "bilinear", align_corners: bool = False,
                      target: torch.Tensor | None = None, class_chunk: int | None = None) -> Dominance:
    """Dominance of the upsampled class maps ``interpolate(W . F + b, size)``.

    ``features`` (N, K, h, w), ``weight`` (C, K), ``bias`` (C,) or None; ``size``
    the output (H, W). Returns a :class:`Dominance` at (H, W).
    """
    # Placeholder until the fused native operator lands: the reference path.
    from clear_native import reference

    return reference.project_dominance(features, weight, bias, size=size, mode=mode,
                                       align_corners=align_corners, target=target)
