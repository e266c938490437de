"""Backward rules for ReLU-family and smooth activations, swapped in for one forward pass.

The deconvnet of Zeiler & Fergus and guided backpropagation (Springenberg et al.)
differ from the plain gradient only in what an activation ``f`` does to the backward
signal ``g`` arriving at its output (``x`` is its forward input). One rule serves every
activation covered here:

    gradient:   g * f'(x)                    (the plain gradient)
    deconvnet:  relu(g)                      (rectify the backward signal)
    guided:     relu(g) * f'(x) * (x > 0)    (the gradient where signal and unit are positive)

For the ReLU, ``f'(x) (x > 0) = (x > 0)``: the papers' rules. Why the same for the others:

* deconvnet ignores the forward activations (only the max-pool switches look at the
  image); Zeiler & Fergus pass the reconstruction through a ReLU whatever the forward
  pass did. The clip of a ReLU6, the slope of a LeakyReLU, the curve of a SiLU are
  forward values, so they are ignored too.
* guided is the plain gradient with, at each activation, negative signals and inactive
  units (``x <= 0``) removed. For LeakyReLU / PReLU / ELU this drops the negative-slope
  part (``f'(x) = 1`` for ``x > 0``, so their rule is exactly the ReLU's); a ReLU6 /
  ``hardtanh(x, 0, t)`` / ``clamp(x, 0, t)`` keeps ``0 < x < t``; a smooth activation keeps
  its own slope at active units (SiLU's ``f'`` runs from 0.5 to 1.1 for ``x > 0``), so that
  the guided maps of a smooth network are its own gradient, rectified, not those of a ReLU
  network. The mask is the input's sign, not ``f' > 0``: SiLU, GELU and Mish have a
  positive slope for some ``x < 0``, where their output is negative and the unit is off;
  every covered ``f`` is positive exactly where ``x > 0`` (Softplus, always positive, is in
  its ReLU-like part there).

:class:`relu_rule` is a :class:`torch.overrides.TorchFunctionMode`: while it is
active, every call of a covered activation runs a custom :class:`torch.autograd.Function`
with the same forward and the chosen backward. Modules call the functional forms, so
modules, functional calls, methods, in-place calls and activation modules used several
times are all covered, and the model itself is never modified. Covered:

* ReLU: ``F.relu``, ``torch.relu``, ``Tensor.relu`` (and in place), ``threshold(x, 0, 0)``,
  ``clamp(x, min=0)`` / ``clamp_min(x, 0)`` / ``clip`` (and in place, functions or methods);
* clipped ReLU (mask ``0 < x < t``): ``nn.ReLU6`` / ``F.relu6``, ``hardtanh(x, 0, t)``,
  ``clamp(x, 0, t)`` with ``t > 0``;
* :data:`ACTIVATIONS` (by their functional forms, which the modules call): LeakyReLU, PReLU
  (frozen weight), SiLU / swish, GELU (both approximations), Hardswish, Mish, ELU, CELU,
  SELU, Softplus, in place where torch has the form. Their ``f'(x)`` is torch's own
  derivative, taken once in the forward pass.

Not covered, but watched (:data:`WATCHED`): tanh, softsign, hardtanh / threshold with
other bounds, RReLU, PReLU with a trainable weight, the shrink functions, logsigmoid,
GLU. They keep their plain gradient; :meth:`relu_rule.unruled` names those the forward
pass called, so that the caller says the maps mix the rule with plain gradients, and
``applied`` counts the activations a rule reached, so that it can say when there was none.
``sigmoid`` / ``hardsigmoid`` are not watched: in the architectures that use them
(squeeze-and-excitation in EfficientNet / MobileNetV3, ``x * sigmoid(x)`` written out)
they gate another tensor rather than act as the layer's activation, and every
guided-backprop implementation leaves gates with their plain gradient. Activations
inside TorchScript or exported graphs are not seen at all.

With ``watch_features=True`` the mode also records the *feature layer* of the model:
the input of the last call that reduces a 4-D map ``(N, K, h, w)`` (h w > 1) to no
spatial extent (global pooling, ``flatten`` / ``view`` / ``reshape`` to 2-D, a mean or
sum over the spatial dims), or the output of a named module (:meth:`relu_rule.mark_feature`).
Activations called after it belong to the classifier's head: once :meth:`relu_rule.feature_layer`
has been called they take the plain gradient, so that ``d logit / d features`` is the
head's true gradient (the response signal of :mod:`clear_native.explain`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from clear_native import rules
from clear_native.rules import Rule

class _HeadTag:
    """Marks a ReLU that may lie above the feature layer (set ``plain`` once known)."""

    __slots__ = ("plain",)

    def __init__(self):
        self.plain = False


def _save_mask(ctx, rule: Rule, x: torch.Tensor, tag: _HeadTag | None, upper: float | None) -> None:
    ctx.rule, ctx.tag, ctx.upper = rule, tag, upper
    ctx.set_materialize_grads(False)
    # A rule that ignores the forward activation (deconvnet) keeps nothing (unless the
    # ReLU may turn out to be part of the head, whose gradient is plain).
    if not rule.reads_activation and tag is None:
        ctx.save_for_backward(None)
    else:
        ctx.save_for_backward(x > 0 if upper is None else (x > 0) & (x < upper))


def _rule(ctx) -> Rule:
    return rules.GRADIENT if ctx.tag is not None and ctx.tag.plain else ctx.rule


class _ReLU(torch.autograd.Function):
    """Out-of-place ReLU (clipped at ``upper`` for ReLU6) with a selectable backward rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: Rule, tag: _HeadTag | None = None,
                upper: float | None = None) -> torch.Tensor:
        _save_mask(ctx, rule, x, tag, upper)
        return x.clamp(min=0, max=upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:  # no signal reached this ReLU (see clear_native._fusion)
            return None, None, None, None
        (mask,) = ctx.saved_tensors
        return _rule(ctx).relu(grad, mask), None, None, None


class _ReLUInplace(torch.autograd.Function):
    """In-place ReLU (``relu_``) with a selectable backward rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: Rule, tag: _HeadTag | None = None,
                upper: float | None = None) -> torch.Tensor:
        _save_mask(ctx, rule, x, tag, upper)  # a new tensor: unaffected by the in-place write
        x.clamp_(min=0, max=upper)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:
            return None, None, None, None
        (mask,) = ctx.saved_tensors
        return _rule(ctx).relu(grad, mask), None, None, None


def _slope(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), f'(x))`` of the elementwise activation ``fn``, with torch's own derivative."""
    with torch.enable_grad():
        xd = x.detach().requires_grad_(True)
        y = fn(xd)
        (d,) = torch.autograd.grad(y, xd, torch.ones_like(y))
    return y.detach(), d


class _SlopeRule(torch.autograd.Function):
    """An activation of :data:`ACTIVATIONS` (``fn``: its out-of-place call on one tensor) with
    a selectable backward rule (module doc); ``inplace`` writes the result into ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: Rule, tag: _HeadTag | None, fn: Callable,
                inplace: bool) -> torch.Tensor:
        ctx.rule, ctx.tag = rule, tag
        ctx.set_materialize_grads(False)
        if not rule.reads_activation and tag is None:  # no forward value needed
            y = fn(x)
            ctx.save_for_backward(*rule.slope_state(x, None))
        else:
            y, d = _slope(fn, x)
            # the rule's state, or (f'(x), x > 0) while the tag may still say head
            ctx.save_for_backward(*(rule.slope_state(x, d) if tag is None else (d, x > 0)))
        if not inplace:
            return y
        x.copy_(y)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:
            return None, None, None, None, None
        d, mask = ctx.saved_tensors
        return _rule(ctx).slope(grad, d, mask), None, None, None, None


@dataclass(frozen=True)
class _ActivationCall:
    """How to run one activation function of :data:`ACTIVATIONS` out of place."""

    name: str
    fn: Callable                     # the out-of-place form, same arguments after the input
    inplace_at: int | None = None    # position of its ``inplace`` argument (last), if any
    in_place: bool = False           # the function always writes in place (``elu_``)
    frozen: tuple | None = None      # (position, name) of a parameter the rule cannot follow

    def bind(self, args: tuple, kwargs: dict) -> tuple[Callable, bool] | None:
        """(``t -> f(t)`` out of place, whether the call writes in place), or None where
        the rule does not apply (a trainable parameter: its gradient would be lost)."""
        if self.frozen is not None:
            p = _arg(args, kwargs, *self.frozen)
            if isinstance(p, torch.Tensor) and p.requires_grad:
                return None
        rest, kw = list(args[1:]), {k: v for k, v in kwargs.items() if k != "input"}
        inplace = self.in_place
        if self.inplace_at is not None:
            if len(args) > self.inplace_at:
                inplace, rest = bool(args[self.inplace_at]), rest[:self.inplace_at - 1]
            else:
                inplace = bool(kw.pop("inplace", False))
        return (lambda t: self.fn(t, *rest, **kw)), inplace


def _registry(*entries) -> dict:
    return {func: _ActivationCall(name, *spec) for name, funcs in entries for func, *spec in funcs}


# Activations other than the (clipped) ReLU that the rules reach, by the function the
# mode sees (modules call the functional forms): func -> _ActivationCall.
ACTIVATIONS: dict = _registry(
    ("LeakyReLU", [(F.leaky_relu, F.leaky_relu, 2), (F.leaky_relu_, F.leaky_relu, None, True)]),
    ("PReLU", [(torch.prelu, torch.prelu, None, False, (1, "weight")),
               (torch.Tensor.prelu, torch.prelu, None, False, (1, "weight"))]),
    ("SiLU", [(F.silu, F.silu, 1)]),
    ("GELU", [(F.gelu, F.gelu)]),
    ("Hardswish", [(F.hardswish, F.hardswish, 1)]),
    ("Mish", [(F.mish, F.mish, 1)]),
    ("ELU", [(F.elu, F.elu, 2), (F.elu_, F.elu, None, True)]),
    ("CELU", [(F.celu, F.celu, 2), (torch.celu, torch.celu), (torch.celu_, torch.celu, None, True)]),
    ("SELU", [(F.selu, F.selu, 1), (torch.selu, torch.selu), (torch.selu_, torch.selu, None, True)]),
    ("Softplus", [(F.softplus, F.softplus)]),
)

# Activations no rule covers that the mode watches for (module doc): func -> name. The
# hardtanh / threshold / prelu calls are here when their arguments are not a rule's.
WATCHED: dict = {
    **dict.fromkeys([torch.tanh, torch.Tensor.tanh, torch.tanh_, torch.Tensor.tanh_], "tanh"),
    **dict.fromkeys([F.hardtanh, F.hardtanh_], "hardtanh"),
    **dict.fromkeys([F.threshold, F.threshold_, torch.threshold, torch.threshold_], "threshold"),
    **dict.fromkeys([F.rrelu, torch.rrelu, torch.rrelu_], "rrelu"),
    **dict.fromkeys([torch.prelu, torch.Tensor.prelu], "prelu (trainable weight)"),
    F.softsign: "softsign", F.tanhshrink: "tanhshrink", F.softshrink: "softshrink",
    F.hardshrink: "hardshrink", F.logsigmoid: "logsigmoid", F.glu: "glu",
}


def covered() -> str:
    """The activations the rules reach, in words (for messages)."""
    names = ", ".join(dict.fromkeys(a.name for a in ACTIVATIONS.values()))
    return (f"ReLU, ReLU6 / hardtanh(x, 0, t), clamp(min=0[, max=t]), {names} as modules, "
            "functions, methods or in place")


_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu}
_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}
_THRESHOLD = {F.threshold, torch.threshold}
_THRESHOLD_IN_PLACE = {F.threshold_, torch.threshold_}
_HARDTANH = {F.hardtanh, F.hardtanh_, F.relu6}
_CLAMP = {torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip}
_CLAMP_IN_PLACE = {torch.clamp_, torch.Tensor.clamp_, torch.clip_, torch.Tensor.clip_}
_CLAMP_MIN = {torch.clamp_min, torch.Tensor.clamp_min}
_CLAMP_MIN_IN_PLACE = {torch.clamp_min_, torch.Tensor.clamp_min_}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default=None):
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


# Calls that may reduce a feature map to no spatial extent (the classifier's pooling or
# flatten); the output's shape decides (see _reduces_space).
_REDUCERS = {
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices, F.avg_pool2d,
    F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d, torch.flatten,
    torch.Tensor.flatten, torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.mean,
    torch.Tensor.mean, torch.sum, torch.Tensor.sum, torch.amax, torch.Tensor.amax,
}


def _reduces_space(x, out) -> bool:
    """``x`` is an (N, K, h, w) map with h w > 1 and ``out`` keeps the batch, not the space."""
    if isinstance(out, tuple) and out:  # (values, indices)
        out = out[0]
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[2] * x.shape[3] > 1
            and isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == x.shape[0]):
        return False
    return out.dim() <= 2 or (out.dim() == 4 and out.shape[2] * out.shape[3] == 1)


class relu_rule(TorchFunctionMode):
    """Context manager: activations called inside use the backward ``rule`` (module doc).

    ``rule`` is a registered rule (:mod:`clear_native.rules`) or its name. Only the
    autograd graph built inside the context is affected; nothing is left behind.
    ``watch_features=True`` also records the feature layer (module doc); with
    ``named_layer=True`` only :meth:`mark_feature` (a hook on the named module) sets it.
    """

    def __init__(self, rule: str | Rule, *, watch_features: bool = False, named_layer: bool = False):
        self.rule = rules.get(rule)
        super().__init__()
        self.watch = watch_features
        self._auto = watch_features and not named_layer
        self._seq = 0
        self._feature: tuple | None = None  # (tensor, version, seq)
        self._tags: list[tuple[int, _HeadTag]] = []
        self.applied = 0  # activations that took the rule
        self._unruled: list[tuple[int, str]] = []  # (seq, name) of watched calls left plain

    def mark_feature(self, t) -> None:
        """Records ``t`` as the feature layer (the latest call wins)."""
        if isinstance(t, torch.Tensor):
            self._feature = (t, t._version, self._seq)

    def unruled(self) -> dict[str, int]:
        """Watched activations (:data:`WATCHED`) the forward pass called that kept their
        plain gradient because no rule covers them: name -> calls. With a feature layer
        recorded, only those below it (the head's gradient is plain anyway)."""
        last = self._feature[2] if self.watch and self._feature is not None else None
        out: dict[str, int] = {}
        for seq, name in self._unruled:
            if last is None or seq <= last:
                out[name] = out.get(name, 0) + 1
        return out

    def feature_layer(self) -> torch.Tensor | None:
        """The recorded feature map (or None); the ReLUs above it switch to the plain
        gradient. Call once the forward pass is done."""
        if self._feature is None:
            return None
        t, version, seq = self._feature
        for s, tag in self._tags:
            tag.plain = s > seq
        self._tags.clear()
        if t._version != version:
            raise ValueError("the feature map was modified in place after the feature layer "
                             "produced it; name an earlier layer with layer=")
        return t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._seq += 1
        out = self._dispatch(func, types, args, kwargs)
        if self._auto and func in _REDUCERS:
            x = _arg(args, kwargs, 0, "input")
            if isinstance(x, torch.Tensor) and x.requires_grad and _reduces_space(x, out):
                self._feature = (x, x._version, self._seq)
        return out

    def _tag(self) -> _HeadTag | None:
        """A tag for a ReLU that may end up above the feature layer."""
        if not self.watch or (self._auto and self._feature is None):
            return None
        tag = _HeadTag()
        self._tags.append((self._seq, tag))
        return tag

    def _dispatch(self, func, types, args, kwargs):
        x = _arg(args, kwargs, 0, "input")
        if (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()
                and kwargs.get("out") is None):
            fn, upper = self._relu_kind(func, args, kwargs)
            if fn is not None:
                self.applied += 1
                return fn.apply(x, self.rule, self._tag(), upper)
            act = ACTIVATIONS.get(func)
            call = act.bind(args, kwargs) if act is not None else None
            if call is not None:
                self.applied += 1
                if self.rule.plain:  # torch's own backward is the rule
                    return func(*args, **kwargs)
                return _SlopeRule.apply(x, self.rule, self._tag(), *call)
            if func in WATCHED:
                self._unruled.append((self._seq, WATCHED[func]))
        return func(*args, **kwargs)

    @staticmethod
    def _relu_kind(func, args, kwargs):
        """(autograd function, clip value or None) for a ReLU-family call, else (None, None)."""
        if func is F.relu:
            return (_ReLUInplace if _arg(args, kwargs, 1, "inplace", False) else _ReLU), None
        if func in _OUT_OF_PLACE:
            return _ReLU, None
        if func in _IN_PLACE:
            return _ReLUInplace, None
        if func in _THRESHOLD or func in _THRESHOLD_IN_PLACE:
            th, value = _arg(args, kwargs, 1, "threshold"), _arg(args, kwargs, 2, "value")
            if th == 0 and value == 0:
                inplace = func in _THRESHOLD_IN_PLACE or (
                    func is F.threshold and _arg(args, kwargs, 3, "inplace", False))
                return (_ReLUInplace if inplace else _ReLU), None
        if func in _CLAMP or func in _CLAMP_IN_PLACE:
            low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
            if _number(low) and low == 0 and (high is None or _number(high) and high > 0):
                upper = None if high is None or math.isinf(high) else float(high)
                return (_ReLUInplace if func in _CLAMP_IN_PLACE else _ReLU), upper
        if func in _CLAMP_MIN or func in _CLAMP_MIN_IN_PLACE:
            low = _arg(args, kwargs, 1, "min")
            if _number(low) and low == 0:
                return (_ReLUInplace if func in _CLAMP_MIN_IN_PLACE else _ReLU), None
        if func in _HARDTANH:
            if func is F.relu6:
                low, high, inplace = 0.0, 6.0, _arg(args, kwargs, 1, "inplace", False)
            else:
                low, high = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
                inplace = func is F.hardtanh_ or _arg(args, kwargs, 3, "inplace", False)
            if low == 0 and isinstance(high, (int, float)) and high > 0:
                return (_ReLUInplace if inplace else _ReLU), float(high)
        return None, None
