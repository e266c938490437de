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
