"""Plain-PyTorch reference implementations of clear_native's operators.

Written for clarity, not speed, with ordinary torch ops only; the tests compare
every native kernel with these, and the benchmarks time them as the baseline.
"""
from __future__ import annotations

import torch

from clear_native.dominance import Dominance


def _masked_arg_extreme(x: torch.Tensor, valid: torch.Tensor, largest: bool):
    """(index, value) of the max (or min) over dim 1 among ``valid`` entries.

    Ties go to the lowest index; -1 / NaN where no entry is valid.
    """
    fill = float("-inf") if largest else float("inf")
    masked = x.masked_fill(~valid, fill)
    best = masked.amax(1, keepdim=True) if largest else masked.amin(1, keepdim=True)
    hit = valid & (masked == best)
    idx = hit.to(torch.uint8).argmax(1)  # first True: the lowest tied index
    any_valid = valid.any(1)
    value = torch.where(any_valid, best.squeeze(1), torch.full_like(best.squeeze(1), float("nan")))
    idx = torch.where(any_valid, idx, torch.full_like(idx, -1))
    return idx, value


def dominance(responses: torch.Tensor, target: torch.Tensor | None = None) -> Dominance:
    """Reference for :func:`clear_native.dominance` (no streaming state).

    ``responses`` (N, C, *spatial); returns a :class:`~clear_native.Dominance`.
    """
    x = responses
    valid = ~torch.isnan(x)
    i1, v1 = _masked_arg_extreme(x, valid, largest=True)
    # Runner-up: the best once the winner is taken out.
    not_first = torch.ones_like(valid).scatter_(1, i1.clamp(min=0).unsqueeze(1), False)
    i2, v2 = _masked_arg_extreme(x, valid & not_first, largest=True)
    im, vm = _masked_arg_extreme(x, valid, largest=False)
    result = Dominance(
        dominant_class=i1, dominant_response=v1, runner_up_class=i2, runner_up_response=v2,
        weakest_class=im, weakest_response=vm, num_classes=x.shape[1])
    if target is not None:
        target = torch.as_tensor(target, device=x.device).to(torch.int64)
        shape = (x.shape[0], 1, *x.shape[2:])
        t_idx = target.view(-1, *([1] * (x.dim() - 1))).expand(shape)
        result.target = target
        result.target_response = x.gather(1, t_idx).squeeze(1)
        not_target = torch.ones_like(valid).scatter_(1, t_idx, False)
        result.rival_class, result.rival_response = _masked_arg_extreme(
            x, valid & not_target, largest=True)
    return result


def class_maps(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Per-class response maps of a linear head applied at every location.

    ``features`` (N, K, h, w), ``weight`` (C, K), ``bias`` (C,) -> (N, C, h, w):
    ``W[c] . F[:, i, j] + b[c]``.
    """
    maps = torch.einsum("nkhw,ck->nchw", features, weight)
    if bias is not None:
        maps = maps + bias.view(1, -1, 1, 1)
    return maps


def project_dominance(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      *, size, mode: str = "bilinear", align_corners: bool = False,
                      target: torch.Tensor | None = None) -> Dominance:
    """Reference for :func:`clear_native.project_dominance`: materialises the
    (N, C, H, W) upsampled class maps, then takes their dominance."""
    import torch.nn.functional as F

    maps = class_maps(features, weight, bias)
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    up = F.interpolate(maps, size=tuple(size), mode=mode, **kwargs)
    return dominance(up, target)


def render(classes: torch.Tensor, responses: torch.Tensor, scale: torch.Tensor,
           palette: torch.Tensor, image: torch.Tensor | None = None, overlay: float = 0.5,
           threshold: float = 0.0, brightness: float = 1.0, grey: bool = True,
           transparent: bool = False) -> torch.Tensor:
    """Reference for ``torch.ops.clear_native.render`` (the fused CLEAR map renderer).

    ``classes`` (N, H, W) int64, ``responses`` (N, H, W) float, ``scale`` (N,),
    ``palette`` (P, 3) uint8, ``image`` (N, 1 or 3, H, W) uint8 (0-255) or float
    (0-1); returns uint8 (N, H, W, 3). The composition, step by step in float32
    (see csrc/render_element.h for the policy):
    V = clamp(response / scale, 0, 1); a pixel is drawn when its class lies in
    [0, P) and V > threshold; drawn pixels get (1 - overlay) * base + overlay *
    palette[class] * V, hidden ones (1 - overlay) * base (black map) or base
    (``transparent``); base is the (grey) image times ``brightness``, or 0.
    """
    f = torch.float32
    n, h, w = classes.shape
    p = palette.shape[0]
    v = (responses.to(f) / scale.to(f).view(n, 1, 1)).clamp(0, 1)
    visible = (classes >= 0) & (classes < p) & (v > threshold)
    if p:
        colour = palette.to(f)[classes.clamp(0, p - 1)]
    else:
        colour = torch.zeros(n, h, w, 3, dtype=f, device=classes.device)
    paint = colour * torch.where(visible, v, torch.zeros_like(v)).unsqueeze(-1)
    if image is None:
        alpha = 1.0
        base = torch.zeros(n, h, w, 3, dtype=f, device=classes.device)
    else:
        alpha = float(overlay)
        img = image.to(f) if image.dtype == torch.uint8 else image.to(f) * 255
        if img.shape[1] == 1:
            base = img[:, 0].unsqueeze(-1).expand(n, h, w, 3)
        elif grey:
            luma = 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
            base = luma.unsqueeze(-1).expand(n, h, w, 3)
        else:
            base = img.permute(0, 2, 3, 1)
        base = base * brightness
    hidden_keep = 1.0 if transparent else 1.0 - alpha
    keep = torch.where(visible, torch.full_like(v, 1.0 - alpha), torch.full_like(v, hidden_keep))
    out = keep.unsqueeze(-1) * base + alpha * paint
    return torch.floor(out.nan_to_num(0.0).clamp(0, 255) + 0.5).to(torch.uint8)


def unpool_deconv(grad: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, input_size,
                  *, pooled: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                  rule: str = "deconvnet", rectify_output: bool = False) -> torch.Tensor:
    """Reference for :func:`clear_native.deconv.unpool_deconv`: the un-pooled map is
    built (scatter of ``grad`` to the switches), passed through the ReLU rule (with the
    mask ``x > 0`` of the conv output, which is ``pooled > 0`` at a switch and
    irrelevant elsewhere: the map is zero there) and transposed-convolved."""
    n, c = grad.shape[:2]
    h_in, w_in = (input_size, input_size) if isinstance(input_size, int) else input_size
    kh, kw = weight.shape[-2:]
    pair = (lambda v: (v, v) if isinstance(v, int) else tuple(v))
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    h_out = (h_in + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    flat = grad.new_zeros(n, c, h_out * w_out)
    flat.scatter_(2, indices.flatten(2), grad.flatten(2))
    if rule != "deconvnet":
        mask = torch.zeros(n, c, h_out * w_out, dtype=torch.bool, device=grad.device)
        mask.scatter_(2, indices.flatten(2), (pooled > 0).flatten(2))
    if rule in ("deconvnet", "guided"):
        flat = flat.clamp(min=0)
    if rule != "deconvnet":
        flat = torch.where(mask, flat, 0)
    unpooled = flat.view(n, c, h_out, w_out)
    # The transposed convolution, as the input gradient of the forward one.
    probe = grad.new_zeros(n, weight.shape[1], h_in, w_in)
    out = torch.ops.aten.convolution_backward(
        unpooled, probe, weight, None, [sh, sw], [ph, pw], [dh, dw], False, [0, 0], 1,
        [True, False, False])[0]
    return out.clamp(min=0) if rectify_output else out
