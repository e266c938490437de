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
never modified.

ReLU6 and ``hardtanh(x, 0, t)`` (``nn.ReLU6``, ``F.relu6``, ``F.hardtanh`` with
``min_val=0``, in place or not) are ReLUs clipped at ``t``: the same rules with the
forward mask ``0 < x < t`` (deconvnet ignores the forward values as for ReLU). Other
activations (LeakyReLU, GELU, SiLU, ...) keep their ordinary gradient; ``applied``
counts the activations a rule reached, so that the caller can say when there was none.

With ``watch_features=True`` the mode also records the *feature layer* of the model:
the input of the last call that reduces a 4-D map ``(N, K, h, w)`` (h w > 1) to no
spatial extent (global pooling, ``flatten`` / ``view`` / ``reshape`` to 2-D, a mean or
sum over the spatial dims), or the output of a named module (:meth:`relu_rule.mark_feature`).
ReLUs called after it belong to the classifier's head: once :meth:`relu_rule.feature_layer`
has been called they take the plain gradient, so that ``d logit / d features`` is the
head's true gradient (the response signal of :mod:`clear_native.explain`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES = ("gradient", "deconvnet", "guided")


class _HeadTag:
    """Marks a ReLU that may lie above the feature layer (set ``plain`` once known)."""

    __slots__ = ("plain",)

    def __init__(self):
        self.plain = False


def _save_mask(ctx, rule: str, x: torch.Tensor, tag: _HeadTag | None, upper: float | None) -> None:
    ctx.rule, ctx.tag, ctx.upper = rule, tag, upper
    ctx.set_materialize_grads(False)
    # deconvnet ignores the forward activation: nothing to keep (unless the ReLU may
    # turn out to be part of the head, whose gradient is plain).
    if rule == "deconvnet" and tag is None:
        ctx.save_for_backward(None)
    else:
        ctx.save_for_backward(x > 0 if upper is None else (x > 0) & (x < upper))


def _rule(ctx) -> str:
    return "gradient" if ctx.tag is not None and ctx.tag.plain else ctx.rule


def _backward(rule: str, grad: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # The bool mask selects (as torch's own ReLU backward does): no float copy of it.
    if rule == "deconvnet":
        return grad.clamp(min=0)
    if rule == "guided":
        return torch.where(mask, grad.clamp(min=0), 0)
    return torch.where(mask, grad, 0)


class _ReLU(torch.autograd.Function):
    """Out-of-place ReLU (clipped at ``upper`` for ReLU6) with a selectable backward rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str, tag: _HeadTag | None = None,
                upper: float | None = None) -> torch.Tensor:
        _save_mask(ctx, rule, x, tag, upper)
        return x.clamp(min=0, max=upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:  # no signal reached this ReLU (see clear_native._fusion)
            return None, None, None, None
        (mask,) = ctx.saved_tensors
        return _backward(_rule(ctx), grad, mask), None, None, None


class _ReLUInplace(torch.autograd.Function):
    """In-place ReLU (``relu_``) with a selectable backward rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str, tag: _HeadTag | None = None,
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
        return _backward(_rule(ctx), grad, mask), None, None, None


_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu}
_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}
_THRESHOLD = {F.threshold, torch.threshold}
_THRESHOLD_IN_PLACE = {F.threshold_, torch.threshold_}
_HARDTANH = {F.hardtanh, F.hardtanh_, F.relu6}


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
    """Context manager: ReLUs called inside use the backward ``rule``.

    ``rule`` is one of ``"gradient"``, ``"deconvnet"``, ``"guided"``. Only the
    autograd graph built inside the context is affected; nothing is left behind.
    ``watch_features=True`` also records the feature layer (module doc); with
    ``named_layer=True`` only :meth:`mark_feature` (a hook on the named module) sets it.
    """

    def __init__(self, rule: str, *, watch_features: bool = False, named_layer: bool = False):
        if rule not in RULES:
            raise ValueError(f"relu_rule: rule must be one of {RULES}, got {rule!r}")
        super().__init__()
        self.rule = rule
        self.watch = watch_features
        self._auto = watch_features and not named_layer
        self._seq = 0
        self._feature: tuple | None = None  # (tensor, version, seq)
        self._tags: list[tuple[int, _HeadTag]] = []
        self.applied = 0  # activations that took the rule

    def mark_feature(self, t) -> None:
        """Records ``t`` as the feature layer (the latest call wins)."""
        if isinstance(t, torch.Tensor):
            self._feature = (t, t._version, self._seq)

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
        if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            fn, upper = self._relu_kind(func, args, kwargs)
            if fn is not None:
                self.applied += 1
                return fn.apply(x, self.rule, self._tag(), upper)
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
        if func in _HARDTANH:
            if func is F.relu6:
                low, high, inplace = 0.0, 6.0, _arg(args, kwargs, 1, "inplace", False)
            else:
                low, high = _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)
                inplace = func is F.hardtanh_ or _arg(args, kwargs, 3, "inplace", False)
            if low == 0 and isinstance(high, (int, float)) and high > 0:
                return (_ReLUInplace if inplace else _ReLU), float(high)
        return None, None
