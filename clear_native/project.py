"""Fused per-class response projection: features -> full-resolution CLEAR dominance."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from clear_native._ops import require_device_support
from clear_native.dominance import Dominance, StreamRecord, _check_target, _from_planes

_MODES = ("bilinear", "nearest")


def _size_pair(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, Sequence) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
        raise ValueError(f"project_dominance: size must be an int or a pair of ints (H, W), got {size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"project_dominance: size must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


def project_dominance(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      *, size, mode: str = "bilinear", align_corners: bool = False,
                      target: torch.Tensor | None = None, class_chunk: int | None = None,
                      runner_up: bool = True, weakest: bool = True) -> Dominance:
    """Dominance of the upsampled class maps ``F.interpolate(W . F + b, size, mode)``.

    For a GAP + linear head (ResNet, VGG-GAP, MobileNet...) or a 1x1 C-kernel last
    convolution + GAP (the paper's ALL-CNN), the class-c response at feature
    location (i, j) is ``W[c] . F[:, i, j] + b[c]``; upsampled to the input size
    these are CLEAR's per-class maps. This computes their :class:`Dominance` without
    building the (N, C, H, W) tensor: the low-resolution maps come from one matmul,
    then a fused upsample + argmax evaluates, inside each low-resolution cell, only
    the classes that can win there (exact; see ``csrc/upsample_dominance_element.h``).

    Args:
        features: (N, K, h, w) feature maps (float32/64, float16/bfloat16 computed
            in float32).
        weight: (C, K) class weights. bias: (C,) or None.
        size: output (H, W) (or one int for a square).
        mode: "bilinear" (both ``align_corners``) or "nearest", with exactly
            ``F.interpolate``'s coordinate conventions.
        target: (N,) class indices for the positive / negative focus fields.
        class_chunk: classes per step (memory O(N * class_chunk * h * w) for the
            low-resolution maps); default all at once.
        runner_up, weakest: set False to skip those fields.

    Returns:
        :class:`Dominance` with (N, H, W) fields; responses in ``features.dtype``.
        Memory O(N*C*h*w + N*H*W).
    """
    n, k, h, w, c = _check_inputs(features, weight, bias, mode)
    out_h, out_w = _size_pair(size)
    require_device_support(features, "project_dominance")
    if class_chunk is None:
        class_chunk = max(c, 1)
    if not isinstance(class_chunk, int) or class_chunk <= 0:
        raise ValueError(f"project_dominance: class_chunk must be a positive int, got {class_chunk!r}")
    if n and (h == 0 or w == 0):
        raise ValueError(f"project_dominance: features must have a non-empty spatial size, got {tuple(features.shape)}")
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    if target is not None:
        target = _check_target(target, features, c)

    # Large heads: one (c', K) x (K, N*h*w) GEMM (near peak) instead of N broadcast ones.
    one_gemm = n > 1 and c * k >= 65536
    if one_gemm:
        flat = features.to(acc).transpose(0, 1).reshape(k, n * h * w)  # (K, N*h*w)
    else:
        flat = features.to(acc).flatten(2)                              # (N, K, h*w)
    values = indices = None
    for start in range(0, max(c, 1), class_chunk):
        stop = min(start + class_chunk, c)
        maps = _class_maps(flat, weight, bias, start, stop, acc, one_gemm, (n, h, w))
        values, indices = torch.ops.clear_native.upsample_dominance(
            maps, [out_h, out_w], mode, align_corners, target, values, indices, start, True,
            runner_up, weakest)
    result = _from_planes(values, indices, features.dtype, target, c)
    # A state for clear_native.dominance over further classes [c, ...): it holds [0, c).
    result.class_end = c
    result.state_record = StreamRecord(((0, c),) if c else (), None, bool(runner_up), bool(weakest))
    return result


def _check_inputs(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  mode: str) -> tuple[int, int, int, int, int]:
    """Checks the tensors (types, shapes, devices) and the mode of
    :func:`project_dominance`; returns ``(N, K, h, w, C)``."""
    for name, t in (("features", features), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"project_dominance: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"project_dominance: {name} must be a floating tensor, got {t.dtype}")
    if features.dim() != 4:
        raise ValueError(f"project_dominance: features must be (N, K, h, w), got shape {tuple(features.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"project_dominance: weight must be (C, K), got shape {tuple(weight.shape)}")
    n, k, h, w = features.shape
    c = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(
            f"project_dominance: weight has K={weight.shape[1]} input features but features have K={k} "
            f"channels (features {tuple(features.shape)}, weight {tuple(weight.shape)})")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (c,):
            raise ValueError(f"project_dominance: bias must be (C,) = ({c},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != features.device:
            raise ValueError(f"project_dominance: {name} is on {t.device} but features are on {features.device}")
    if mode not in _MODES:
        raise ValueError(f"project_dominance: mode must be one of {_MODES}, got {mode!r}")
    return n, k, h, w, c


def _class_maps(flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, stop: int,
                acc: torch.dtype, one_gemm: bool, nhw: tuple[int, int, int]) -> torch.Tensor:
    """The low-resolution maps ``W . F + b`` of classes ``[start, stop)``, (N, c', h, w).

    ``one_gemm``: ``flat`` is (K, N*h*w) and one GEMM serves every image; the maps are a
    class-major view (strides of the (c', N*h*w) product). Otherwise ``flat`` is
    (N, K, h*w) and the product is batched over the images."""
    n, h, w = nhw
    w_chunk = weight[start:stop].to(acc)
    if one_gemm:
        # The bias inside the GEMM (addmm); the (N, c', h, w) maps stay a view of its
        # (c', N*h*w) result, which the CPU kernel reads in place.
        maps = (w_chunk @ flat if bias is None else
                torch.addmm(bias[start:stop].to(acc).unsqueeze(1), w_chunk, flat))
        return maps.view(stop - start, n, h, w).transpose(0, 1)
    maps = torch.matmul(w_chunk, flat)  # (N, c', h*w)
    if bias is not None:
        maps = maps + bias[start:stop].to(acc).unsqueeze(-1)
    return maps.view(n, stop - start, h, w)
