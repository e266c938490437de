"""Backward rules of the back-projection methods: one small class per rule, one registry.

A rule says how the backward signal ``g`` passes an activation of the explained
network (module doc of :mod:`clear_native._relu_rules`): at a ReLU with forward mask
``m = x > 0`` the paper's three methods send

* ``gradient``: ``g m`` (torch's own backward),
* ``deconvnet``: ``relu(g)`` (Zeiler & Fergus; the forward value is not looked at),
* ``guided``: ``relu(g) m`` (Springenberg et al.),

and at a smooth activation with derivative ``f'(x)`` the same with ``f'(x)`` for ``m``.
A rule also says what :class:`clear_native.Clear` needs to pick its routes: whether the
native ``unpool_deconv`` kernel implements it (``kernel_id``), whether its backward
ignores the forward activations (``reads_activation``: then the top layers' signal of
the logit is the same for every image), and its defaults.

Adding a rule is one class here (or in user code) registered with :func:`register`:
``Clear(model, rule.name)``, the CLI choices and ``clear_native.explain.METHODS`` read
the registry. A rule without a ``kernel_id`` runs through torch's autograd only.
Modelled on zennit's ``rules.py`` (one small class per rule, composites by name).
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

import torch


class Rule:
    """A backward rule for the activations of the explained network (module doc).

    Subclasses set ``name`` and override :meth:`relu` (and, where the smooth activations
    need more than the ReLU's rule with ``f'(x)`` for the mask, :meth:`slope`)."""

    name: ClassVar[str] = ""
    # Id of the rule in the native unpool_deconv kernel (csrc/unpool_deconv_element.h),
    # or None: the fused conv -> ReLU -> max-pool pass does not implement it.
    kernel_id: ClassVar[int | None] = None
    # False where the backward never looks at the forward activation (deconvnet).
    reads_activation: ClassVar[bool] = True
    # True where the backward is torch's own (no custom node needed).
    plain: ClassVar[bool] = False
    default_signal: ClassVar[str] = "response"
    default_channel_reduce: ClassVar[str] = "sum"
    # How class maps are put on one scale (clear_native.Clear's class_scale).
    default_class_scale: ClassVar[str] = "evidence"

    def relu(self, grad: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The signal below a ReLU, given the signal above it and the bool mask ``x > 0``
        (None where ``reads_activation`` is False)."""
        raise NotImplementedError

    def slope_state(self, x: torch.Tensor, slope: torch.Tensor) -> tuple:
        """What a smooth activation keeps for :meth:`slope`: ``(f'(x), x > 0)`` by default."""
        return slope, x > 0

    def slope(self, grad: torch.Tensor, slope: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """The signal below a smooth activation with derivative ``slope`` = ``f'(x)``."""
        return self.relu(grad * slope, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_REGISTRY: dict[str, Rule] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: makes ``cls.name`` a method of :class:`clear_native.Clear`."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)) or not cls.name:
        raise TypeError(f"register: expected a Rule subclass with a name, got {cls!r}")
    if cls.name == "cam" or (cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls):
        raise ValueError(f"register: the name {cls.name!r} is taken")
    if "kernel_id" not in vars(cls) and any(m in vars(cls) for m in ("relu", "slope", "slope_state")):
        cls.kernel_id = None  # the kernel implements the parent's backward, not this one
    _REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


@contextlib.contextmanager
def registered(cls: type[Rule]):
    """``with registered(MyRule): ...``: the rule is a method inside the block only."""
    register(cls)
    try:
        yield _REGISTRY[cls.name]
    finally:
        unregister(cls.name)


def names() -> tuple[str, ...]:
    """The registered rules' names, in registration order (the paper's first)."""
    return tuple(_REGISTRY)


def get(rule: str | Rule) -> Rule:
    """The rule object of a name (or the rule itself)."""
    if isinstance(rule, Rule):
        return rule
    if rule not in _REGISTRY:
        raise ValueError(f"rule must be one of {names()}, got {rule!r}")
    return _REGISTRY[rule]


@register
class Deconvnet(Rule):
    """Zeiler & Fergus: the signal is rectified at every ReLU; the forward value is
    ignored. Default channel reduction: the magnitude (the sign at the input is only the
    first layer's filter polarity; docs/method.md)."""

    name = "deconvnet"
    kernel_id = 1
    reads_activation = False
    default_channel_reduce = "max_abs"
    default_class_scale = "raw"  # the paper's method exactly

    def relu(self, grad, mask):
        return grad.clamp(min=0)

    def slope_state(self, x, slope):
        return None, None

    def slope(self, grad, slope, mask):
        return grad.clamp(min=0)


@register
class Guided(Rule):
    """Guided backprop: rectified and masked by the forward activation."""

    name = "guided"
    kernel_id = 2

    def relu(self, grad, mask):
        # The bool mask selects (as torch's own ReLU backward does): no float copy of it.
        return torch.where(mask, grad.clamp(min=0), 0)

    def slope_state(self, x, slope):
        return torch.where(x > 0, slope, 0), None  # f'(x) (x > 0), one tensor

    def slope(self, grad, slope, mask):
        g = grad.clamp(min=0) * slope
        return g if mask is None else torch.where(mask, g, 0)


@register
class Gradient(Rule):
    """The plain gradient (torch's own backward)."""

    name = "gradient"
    kernel_id = 0
    plain = True

    def relu(self, grad, mask):
        return torch.where(mask, grad, 0)

    def slope(self, grad, slope, mask):
        return grad * slope


GRADIENT = _REGISTRY["gradient"]
