"""One deconvnet layer in one native pass: un-pool, ReLU rule, transposed convolution.

For a ``conv -> ReLU -> max-pool`` block (pooling windows that do not overlap), the
backward signal ``grad`` at the pool's output reaches the conv's input as

    conv_transpose2d(rule(max_unpool(grad, indices)), weight, stride, padding, dilation)

where ``rule`` is the ReLU's backward rule (:mod:`clear_native._relu_rules`). The
un-pooled map is at least 3/4 zeros (2x2 pooling) and a rectifying rule zeroes about
half of the rest, so :func:`unpool_deconv` never builds it: each non-zero pooled
signal adds ``signal * weight[c, :, ky, kx]`` to the kh x kw input pixels its switch
reaches. :class:`clear_native.Clear` uses it for such blocks of the model it explains.
"""
from __future__ import annotations

import torch

from clear_native import rules
from clear_native._ops import require_device_support


def kernel_rules() -> dict[str, int]:
    """The registered rules the native kernel implements: name -> its id there."""
    return {name: rules.get(name).kernel_id for name in rules.names() if rules.get(name).kernel_id is not None}


def _pair(value, name: str) -> list[int]:
    v = [value, value] if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if len(v) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ValueError(f"unpool_deconv: {name} must be an int or a pair of ints, got {value!r}")
    return v


def unpool_deconv(grad: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, input_size,
                  *, pooled: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                  rule: str | rules.Rule = "deconvnet", rectify_output: bool = False) -> torch.Tensor:
    """The backward signal of ``conv2d -> ReLU -> max_pool2d`` at the conv's input.

    Args:
        grad: (N, C, h, w) signal at the pool's output (float32 or float64).
        indices: (N, C, h, w) int64 switches from ``max_pool2d(..., return_indices=True)``
            (flat positions in the conv's (H_out, W_out) output plane). The pooling
            windows must not overlap (kernel <= stride): then every conv output has at
            most one switch.
        weight: (C, C_in, kh, kw) the convolution's weight (groups=1).
        input_size: (H_in, W_in) of the convolution's input.
        pooled: (N, C, h, w) the pool's output; needed by the ``"gradient"`` and
            ``"guided"`` rules (the ReLU's mask at a switch is ``pooled > 0``).
        stride, padding, dilation: the convolution's.
        rule: a rule of :mod:`clear_native.rules` with a kernel id, or its name:
            ``"deconvnet"`` (rectify the signal), ``"guided"`` (rectify and mask) or
            ``"gradient"`` (mask).
        rectify_output: clamp the result at 0 (``torch.clamp(min=0)``): the deconvnet rule
            of a ReLU whose output is the conv's input, applied in the same pass.

    Returns:
        (N, C_in, H_in, W_in), contiguous.
    """
    kernel_id = rules.get(rule).kernel_id if isinstance(rule, rules.Rule) or rule in rules.names() else None
    if kernel_id is None:
        raise ValueError(f"unpool_deconv: rule must be one of {tuple(kernel_rules())}, got {rule!r}")
    for name, t in (("grad", grad), ("indices", indices), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"unpool_deconv: {name} must be a torch.Tensor, got {type(t).__name__}")
    if pooled is not None and not isinstance(pooled, torch.Tensor):
        raise TypeError(f"unpool_deconv: pooled must be a torch.Tensor or None, got {type(pooled).__name__}")
    for name, t in (("indices", indices), ("weight", weight), ("pooled", pooled)):
        if t is not None and t.device != grad.device:
            raise ValueError(f"unpool_deconv: {name} is on {t.device} but grad is on {grad.device}")
    require_device_support(grad, "unpool_deconv")
    size = _pair(input_size, "input_size")
    return torch.ops.clear_native.unpool_deconv(
        grad, indices, pooled, weight, size, _pair(stride, "stride"), _pair(padding, "padding"),
        _pair(dilation, "dilation"), kernel_id, bool(rectify_output))
