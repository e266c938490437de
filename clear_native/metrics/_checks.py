"""Argument checks shared by the metrics: shapes named with what was expected."""
from __future__ import annotations

import torch


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
