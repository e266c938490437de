"""The ``"cam"`` method's map sources: class maps at the feature layer ``f``, upsampled.

* :class:`LinearCam`: a linear head on the globally pooled ``f`` (``W[c] . f + b[c]``) or
  a 1x1 class convolution + GAP; the whole-table case runs the fused
  :func:`clear_native.project_dominance` operator instead of the stream.
* :class:`MapsCam`: the class maps a C-kernel last convolution + GAP computes.
* :class:`ContributionCam`: any other head, ``h w M_c`` of :mod:`clear_native._response`
  from one batched backward pass per class chunk.

:func:`cam_source` runs the forward pass and picks the exact source where the head
allows it (:func:`exact_cam`), the contribution otherwise (or with ``exact=False``).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from clear_native._backproject import check_logits, feature_layer
from clear_native._relu_rules import relu_rule
from clear_native._response import ResponseSignal

class LinearCam:
    """cam class maps ``W[c] . f(i, j) + b[c]``: a linear head on the globally pooled
    features ``f`` (N, K, h, w), or a 1x1 class convolution (``f`` its input) + GAP."""

    passes = ()  # no backward pass

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, feats: torch.Tensor, how: str):
        self.weight, self.bias, self.feats, self.how = weight, bias, feats, how

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        """(N, B, h, w) for the class ids (N, B)."""
        w = self.weight[ids].to(self.feats.dtype)                        # (N, B, K)
        low = torch.einsum("nkhw,nbk->nbhw", self.feats, w)
        if self.bias is not None:
            low = low + self.bias[ids].to(self.feats.dtype)[:, :, None, None]
        return low


class MapsCam:
    """cam class maps that the model computes: a C-kernel last convolution + GAP."""

    how = "class maps of the last convolution"
    passes = ()  # no backward pass

    def __init__(self, maps: torch.Tensor):
        self.class_maps = maps  # (N, C, h, w)

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        return self.class_maps.gather(1, ids[:, :, None, None].expand(-1, -1, *self.class_maps.shape[2:]))


class ContributionCam:
    """cam class maps of any other head: ``h w M_c``, the per-position contribution
    ``sum_k f dy_c/df`` (+ the offset spread evenly) of :class:`ResponseSignal`, one
    batched backward pass from the logits to the feature layer per class chunk."""

    how = "head contribution"

    def __init__(self, source: ResponseSignal, num_classes: int):
        self.source, self.c = source, num_classes
        self.passes: list[int] = []  # classes per backward pass

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        n, b = ids.shape
        self.passes.append(b)
        y = self.source.logits
        grad_out = torch.zeros(b, n, self.c, dtype=y.dtype, device=y.device)
        grad_out.scatter_(2, ids.t().unsqueeze(2), 1)
        m = self.source.class_maps(self.source.head_gradient(grad_out, last), grad_out)  # (B, N, h, w)
        return (m * (m.shape[-2] * m.shape[-1])).transpose(0, 1)


def upsample(maps: torch.Tensor, size, mode: str) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps, size=size, mode=mode, **kwargs)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    tol = 1e-2 if a.dtype != b.dtype or torch.is_autocast_enabled() else 1e-4
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max()) if b.numel() else 1.0))


class LastCalls:
    """Records the last call of any nn.Linear and of any nn.Conv2d of a model: (module,
    input, output, the output's version counter at the time)."""

    def __init__(self):
        self.linear: tuple | None = None
        self.conv: tuple | None = None

    @contextlib.contextmanager
    def watch(self, model: nn.Module):
        def hook(key):
            def record(module, args, out):
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    setattr(self, key, (module, args[0], out, out._version))
            return record

        handles = [m.register_forward_hook(hook("linear" if isinstance(m, nn.Linear) else "conv"))
                   for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def exact_cam(f: torch.Tensor, logits: torch.Tensor, calls: LastCalls):
    """The exact cam source where the logits are a linear map of the global average of the
    (detached) feature map ``f`` (N, K, h, w): ``linear(GAP(f))`` (the last nn.Linear's input
    is the pooled ``f`` and its output the logits) or ``GAP(f)`` itself (C-kernel last conv:
    its 1x1 form as weights on the conv's input). None where neither holds."""
    pooled = f.mean((2, 3))
    out = logits.detach()
    if calls.linear is not None:
        lin, lin_in, lin_out, _ = calls.linear
        if _close(lin_in.detach().flatten(1), pooled) and _close(lin_out.detach(), out):
            return LinearCam(lin.weight.detach(), None if lin.bias is None else lin.bias.detach(),
                             f.contiguous(), "linear head (fused)")
    if not _close(pooled, out):
        return None
    if calls.conv is not None:
        conv, conv_in, conv_out, version = calls.conv
        direct = (conv_out.data_ptr() == f.data_ptr() and conv_out.shape == f.shape
                  and conv_out.stride() == f.stride() and conv_out._version == version == f._version)
        if (direct and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
                and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)):
            return LinearCam(conv.weight.detach().flatten(1), None if conv.bias is None else
                             conv.bias.detach(), conv_in.detach(), "1x1 class convolution (fused)")
    return MapsCam(f)


class Upsampled:
    """A cam source's maps upsampled to the input's size (``maps(ids)`` -> (N, B, H, W))."""

    def __init__(self, source, size, mode: str):
        self.source, self.size, self.mode = source, tuple(size), mode

    @property
    def passes(self):
        return self.source.passes

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        return upsample(self.source.maps(ids, last), self.size, self.mode)


def cam_source(model: nn.Module, images: torch.Tensor, site, who: str, *, exact: bool = True):
    """(detached logits (N, C), class-map source, description): one forward pass under the
    plain gradient rule, which records the feature layer ``f`` and changes nothing in the
    forward; the last nn.Linear / nn.Conv2d calls decide whether an exact source applies."""
    x = images.detach().clone().requires_grad_(True)
    calls = LastCalls()
    with calls.watch(model):
        with relu_rule("gradient", watch_features=True, named_layer=site.module is not None) as mode, \
                site.watch(mode):
            logits = model(x)
    check_logits(logits, images)
    f, to_grid, what = feature_layer(site, mode, images.shape[-2:], who)
    grid = None if f is None else f.detach() if to_grid is None else to_grid(f.detach())
    if exact and grid is not None and grid.dim() == 4:
        fast = exact_cam(grid, logits, calls)
        if fast is not None:
            return logits.detach(), fast, f"{fast.how} at the {what}, shape {tuple(grid.shape)}"
    source = ResponseSignal.make(f, logits, x, False, who, named=site.named, to_grid=to_grid,
                                 instead="use method='deconvnet', 'guided' or 'gradient' with signal='logit'")
    return (logits.detach(), ContributionCam(source, logits.shape[1]),
            f"{ContributionCam.how} at the {what}, shape {tuple(source.features.shape)}")
