"""Argument checks of :class:`clear_native.Clear`: what was expected and what came in."""
from __future__ import annotations

import torch
import torch.nn as nn

from clear_native import rules
from clear_native._backproject import CHANNEL_REDUCE, CLASS_SCALES
from clear_native._lrp import INPUT_RULES, LRP_DEFAULT_SIGNAL

SIGNALS = ("response", "logit")


def check_options(method, rule, signal, channel_reduce, interpolation, layer, reshape) -> str | None:
    """The checked signal (the rule's default where None; None for cam)."""
    if channel_reduce not in CHANNEL_REDUCE:
        raise ValueError(f"Clear: channel_reduce must be one of {CHANNEL_REDUCE}, got {channel_reduce!r}")
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"Clear: interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    if reshape is not None and not callable(reshape):
        raise TypeError(f"Clear: reshape must be a callable (N, ...) -> (N, D, h, w), got "
                        f"{type(reshape).__name__}")
    if rule is None and method != "lrp":
        if signal is not None:
            raise ValueError("Clear: signal= applies to the back-projection methods "
                             f"{rules.names()}; method='cam' projects its class maps directly")
        return None
    if signal is None:
        signal = rule.default_signal if rule else LRP_DEFAULT_SIGNAL
    if signal not in SIGNALS:
        raise ValueError(f"Clear: signal must be one of {SIGNALS}, got {signal!r}")
    for arg, value in (("layer", layer), ("reshape", reshape)):
        if value is not None and signal != "response":
            raise ValueError(f"Clear: {arg}= names the feature layer of method='cam' or "
                             f"signal='response', got method={method!r}, signal={signal!r}")
    return signal


def check_class_scale(method, rule, class_scale) -> str | None:
    """The checked class scale (the rule's default where None; None for cam and lrp)."""
    if rule is None:
        if class_scale is not None:
            why = ("its maps conserve the class's evidence by construction" if method == "lrp"
                   else "its maps are the class maps themselves")
            raise ValueError(f"Clear: class_scale= applies to the back-projection methods {rules.names()}; "
                             f"method={method!r} takes none: {why}")
        return None
    class_scale = rule.default_class_scale if class_scale is None else class_scale
    if class_scale not in CLASS_SCALES:
        raise ValueError(f"Clear: class_scale must be one of {CLASS_SCALES}, got {class_scale!r}")
    return class_scale


def check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"Clear: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"Clear: images must be (N, ch, H, W), got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"Clear: images must be floating point, got {images.dtype}")


def check_chunk(chunk, name: str = "class_chunk") -> None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"Clear: {name} must be None or an int >= 1, got {chunk!r}")


def named_module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"Clear: layer {layer!r} is not a module of {type(model).__name__} "
                         f"(expected a name from model.named_modules())")
    return modules[layer]


def check_lrp_input(method, input_rule, input_bounds) -> tuple[str | None, tuple | None]:
    """``method="lrp"``'s input-layer rule (default ``"zb"``) and z^B bounds as tensors
    broadcastable to the image ((1, ch, 1, 1) per channel, or scalars); (None, None) for
    the other methods, which take neither."""
    if method != "lrp":
        if input_rule is not None or input_bounds is not None:
            raise ValueError(f"Clear: input_rule= / input_bounds= apply to method='lrp', got method={method!r}")
        return None, None
    rule = "zb" if input_rule is None else input_rule
    if rule not in INPUT_RULES:
        raise ValueError(f"Clear: input_rule must be one of {INPUT_RULES}, got {input_rule!r}")
    if input_bounds is None:
        return rule, None
    if rule != "zb":
        raise ValueError(f"Clear: input_bounds= is the box of input_rule='zb', got input_rule={rule!r}")
    if not isinstance(input_bounds, (tuple, list)) or len(input_bounds) != 2:
        raise ValueError("Clear: input_bounds must be (low, high): floats, per-channel sequences or tensors "
                         f"broadcastable to the images, got {input_bounds!r}")
    low, high = (_bound(b) for b in input_bounds)
    if bool((low > high).any()):
        raise ValueError(f"Clear: input_bounds needs low <= high, got {input_bounds!r}")
    return rule, (low, high)


def _bound(b) -> torch.Tensor:
    t = b.detach() if isinstance(b, torch.Tensor) else torch.as_tensor(b, dtype=torch.float64)
    if t.dim() == 1:  # per channel
        t = t.view(1, -1, 1, 1)
    return t
