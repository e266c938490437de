"""Backward rules for ReLU, swapped in for the duration of one forward pass.

The deconvnet of Zeiler & Fergus and guided backpropagation (Springenberg et al.)
differ from the plain gradient only in what a ReLU does to the backward signal
``g`` arriving at its output (``x`` is the ReLU's forward input):

    gradient:   g * (x > 0)
    deconvnet:  relu(g)                 (rectify the backward signal)
    guided:     relu(g) * (x > 0)       (rectify and mask by the forward activation)

:class:`relu_rule` is a :class:`torch.overrides.TorchFunctionMode`: while it is
active, every call of ``F.relu``, ``torch.relu``, ``Tensor.relu`` (and their
in-place forms) and of ``threshold(x, 0, 0)`` runs a custom
:class:`torch.autograd.Function` with the same forward and the chosen backward.
``nn.ReLU`` calls ``F.relu``, so modules, functional calls, in-place calls and
activation modules used several times are all covered, and the model itself is
never modified. Other activations (ReLU6, LeakyReLU, GELU, ...) keep their
ordinary gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("gradient", "deconvnet", "guided")


def _save_mask(ctx, rule: str, x: torch.Tensor) -> None:
    # deconvnet ignores the forward activation: nothing to keep.
    ctx.save_for_backward(None if rule == "deconvnet" else x > 0)


def _backward(rule: str, grad: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # The bool mask selects (as torch's own ReLU backward does): no float copy of it.
    if rule == "deconvnet":
        return grad.clamp(min=0)
    if rule == "guided":
        return torch.where(mask, grad.clamp(min=0), 0)
    return torch.where(mask, grad, 0)


class _ReLU(torch.autograd.Function):
    """Out-of-place ReLU with a selectable backward rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str) -> torch.Tensor:
        ctx.rule = rule
        ctx.set_materialize_grads(False)
        _save_mask(ctx, rule, x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:  # no signal reached this ReLU (see clear_native._fusion)
            return None, None
        (mask,) = ctx.saved_tensors
        return _backward(ctx.rule, grad, mask), None


class _ReLUInplace(torch.autograd.Function):
    """In-place ReLU (``relu_``) with a selectable backward rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str) -> torch.Tensor:
        ctx.rule = rule
        ctx.set_materialize_grads(False)
        _save_mask(ctx, rule, x)  # a new tensor: unaffected by the in-place write
        x.clamp_(min=0)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:
            return None, None
        (mask,) = ctx.saved_tensors
        return _backward(ctx.rule, grad, mask), None


_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu}
_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}
_THRESHOLD = {F.threshold, torch.threshold}
_THRESHOLD_IN_PLACE = {F.threshold_, torch.threshold_}


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default=None):
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


class relu_rule(TorchFunctionMode):
    """Context manager: ReLUs called inside use the backward ``rule``.

    ``rule`` is one of ``"gradient"``, ``"deconvnet"``, ``"guided"``. Only the
    autograd graph built inside the context is affected; nothing is left behind.
    """

    def __init__(self, rule: str):
        if rule not in RULES:
            raise ValueError(f"relu_rule: rule must be one of {RULES}, got {rule!r}")
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = _arg(args, kwargs, 0, "input")
        if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            if func is F.relu:
                fn = _ReLUInplace if _arg(args, kwargs, 1, "inplace", False) else _ReLU
                return fn.apply(x, self.rule)
            if func in _OUT_OF_PLACE:
                return _ReLU.apply(x, self.rule)
            if func in _IN_PLACE:
                return _ReLUInplace.apply(x, self.rule)
            if func in _THRESHOLD or func in _THRESHOLD_IN_PLACE:
                th, value = _arg(args, kwargs, 1, "threshold"), _arg(args, kwargs, 2, "value")
                if th == 0 and value == 0:
                    inplace = func in _THRESHOLD_IN_PLACE or (
                        func is F.threshold and _arg(args, kwargs, 3, "inplace", False))
                    return (_ReLUInplace if inplace else _ReLU).apply(x, self.rule)
        return func(*args, **kwargs)
