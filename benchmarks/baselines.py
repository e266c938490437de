"""The benchmarks' second baseline: the fastest plain-PyTorch formulation of each
benchmarked result, as a user would write it without clear_native.

``clear_native.reference`` is written for clarity (masked reductions, a scatter for
the runner-up) and is 4-6x slower than this; docs/performance.md's tables give both ratios.
These functions assume what the benchmark inputs guarantee: no NaN (``max`` / ``topk``
propagate NaN, the operators skip it) and no ties among the top two or the minimum
(``topk`` does not promise the lower class on ties). ``matches_reference`` checks the
results against ``clear_native.reference`` on the benchmark inputs (untimed tests in
the benchmark files).

Alternatives measured on the 2-core development machine (float32, 2 threads):
``x.topk(2, 1)`` + ``x.min(1)`` and ``x.movedim(1, -1).topk(2, -1)`` are within noise of
each other and 1.3-1.4x faster than a transposed copy + ``topk`` on the last dim or
``x.max(1)`` + ``scatter`` + ``max``; for the upsampled class maps, channels-last maps
(``topk`` / ``min`` along the contiguous class dim) are 2.5-3x faster than NCHW, and two
images at a time beat one or all eight.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from clear_native import reference

FIELDS = ("dominant_class", "dominant_response", "runner_up_class", "runner_up_response",
          "weakest_class", "weakest_response")
TARGET_FIELDS = ("target_response", "rival_class", "rival_response")


def dominance(x: torch.Tensor, target: torch.Tensor | None = None, *, runner_up: bool = True,
              weakest: bool = True) -> SimpleNamespace:
    """Dominant / runner-up / weakest class and response per pixel of ``x`` (N, C, ...),
    and, with ``target`` (N,), the target's response and the best other class."""
    out = SimpleNamespace()
    if runner_up or target is not None:
        values, indices = x.topk(2, 1)
        out.dominant_response, out.runner_up_response = values.unbind(1)
        out.dominant_class, out.runner_up_class = indices.unbind(1)
    else:
        out.dominant_response, out.dominant_class = x.max(1)
    if weakest:
        out.weakest_response, out.weakest_class = x.min(1)
    if target is not None:
        t = target.view(-1, *([1] * (x.dim() - 1)))
        out.target_response = x.gather(1, t.expand(x.shape[0], 1, *x.shape[2:])).squeeze(1)
        is_top = out.dominant_class == t.squeeze(1)
        out.rival_class = torch.where(is_top, out.runner_up_class, out.dominant_class)
        out.rival_response = torch.where(is_top, out.runner_up_response, out.dominant_response)
    return out


def class_maps(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``W . F + b`` at every location: (N, K, h, w), (C, K), (C,) -> (N, C, h, w),
    channels-last (the class dim contiguous for the reductions)."""
    maps = torch.einsum("nkhw,ck->nchw", features, weight)
    if bias is not None:
        maps = maps + bias.view(1, -1, 1, 1)
    return maps.contiguous(memory_format=torch.channels_last)


def class_map_gemm_operands(features: torch.Tensor, weight: torch.Tensor):
    """The operands of the class-map GEMM alone, (C, K) and (K, N*h*w), prepared
    outside the timing: ``class_map_gemm(*operands)`` is the roofline of
    project_dominance (which runs this very product, plus the bias, inside)."""
    n, k, h, w = features.shape
    return weight.contiguous(), features.transpose(0, 1).reshape(k, n * h * w).contiguous()


def class_map_gemm(weight: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return weight @ flat


def project_dominance(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      *, size, mode: str = "bilinear", align_corners: bool = False,
                      target: torch.Tensor | None = None, runner_up: bool = True, weakest: bool = True,
                      chunk_bytes: int = 2**29) -> SimpleNamespace:
    """Dominance of ``F.interpolate(W . F + b, size)``: the class maps, then the
    upsampled maps a few images at a time (at most ``chunk_bytes`` of them, at least
    one image), each reduced as :func:`dominance`."""
    maps = class_maps(features, weight, bias)
    n, c = maps.shape[:2]
    per_image = c * size[0] * size[1] * maps.element_size()
    step = max(1, chunk_bytes // max(per_image, 1))
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    parts = []
    for s in range(0, n, step):
        up = F.interpolate(maps[s:s + step], size=tuple(size), mode=mode, **kwargs)
        parts.append(dominance(up, None if target is None else target[s:s + step],
                               runner_up=runner_up, weakest=weakest))
    return SimpleNamespace(**{k: torch.cat([getattr(p, k) for p in parts])
                              for k in vars(parts[0])})


def matches_reference(got: SimpleNamespace, want, fields=FIELDS, *, exact: bool = True) -> list[str]:
    """Fields of ``got`` (those it has among ``fields``) that differ from the reference
    result ``want``: classes exactly, responses bit for bit (``exact``) or to float32
    rounding (the plain formulation interpolates in another order)."""
    bad = []
    for name in fields:
        if not hasattr(got, name):
            continue
        g, w = getattr(got, name), getattr(want, name)
        if g.dtype.is_floating_point and not exact:
            ok = torch.allclose(g, w, rtol=1e-5, atol=1e-5)
        else:
            ok = torch.equal(g, w)
        if not ok:
            bad.append(name)
    return bad


def reference_dominance(x, target=None):
    return reference.dominance(x, target)


def unpool_deconv(grad: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, size, *, padding=1,
                  pool=2) -> torch.Tensor:
    """One deconvnet layer the plain way: the rule (``relu``) on the pooled signal, torch's
    ``max_unpool2d`` to the switches, then ``conv_transpose2d`` (stride 1, square kernel)."""
    h = size[0] + 2 * padding - weight.shape[-2] + 1
    w = size[1] + 2 * padding - weight.shape[-1] + 1
    up = F.max_unpool2d(grad.clamp(min=0), indices, pool, output_size=(h, w))
    return F.conv_transpose2d(up, weight, padding=padding)


_LUMA = (0.299, 0.587, 0.114)


def render(classes: torch.Tensor, responses: torch.Tensor, scale: torch.Tensor, palette: torch.Tensor,
           image: torch.Tensor, overlay: float = 0.5) -> torch.Tensor:
    """The CLEAR overlay the plain way (reference.render's policy, threshold 0, grey image):
    ``(1 - a) * grey + a * palette[class] * V`` where the class is valid and ``V > 0``."""
    p = palette.shape[0]
    v = (responses / scale.view(-1, 1, 1)).clamp(0, 1)
    v = torch.where((classes >= 0) & (classes < p), v, 0)
    colour = palette.float()[classes.clamp(0, p - 1)]                        # (N, H, W, 3)
    luma = torch.einsum("nchw,c->nhw", image, image.new_tensor(_LUMA)) * (255 * (1 - overlay))
    out = torch.addcmul(luma.unsqueeze(-1), colour, (overlay * v).unsqueeze(-1))
    return (out + 0.5).floor_().clamp_(0, 255).to(torch.uint8)
