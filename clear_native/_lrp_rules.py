"""The LRP rules of ``method="lrp"`` (:mod:`clear_native._lrp`) as autograd nodes.

Each covered call of the explained network becomes one :class:`_Ruled` node whose forward is
the call itself and whose backward is the rule of its op (zennit's arithmetic, stabiliser
``z + 1e-6 sign(z)`` with ``sign(0) = +1``): :class:`_Affine` (z+ / flat / epsilon, eval
BatchNorm folded in), :class:`_Sum` and :class:`_AvgPool` (norm), :class:`_MaxPool` (the plain
gradient). Ops above the feature layer of the response signal (``plain``) take the plain
gradient. What every class's backward pass shares is computed once by ``prepare()`` after the
forward pass; ``backward`` uses plain tensor ops only, so that ``is_grads_batched`` runs
several classes per pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from torch._C._functorch import is_batchedtensor

from clear_native import rules
from clear_native._fusion import FEW_INPUT_CHANNELS, _col2im

EPSILON = 1e-6  # zennit's epsilon and stabiliser


def stabilize(z: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """zennit's ``stabilize``: ``z + eps sign(z)`` with ``sign(0) = +1``."""
    return z + ((z == 0).to(z) + z.sign()) * eps


class _Pass(rules.Rule):
    """Activations pass the relevance unchanged (zennit's ``Pass``); not registered."""

    name = "lrp-pass"
    reads_activation = False

    def relu(self, grad, mask):
        return grad

    def slope_state(self, x, slope):
        return None, None

    def slope(self, grad, slope, mask):
        return grad


class _Ruled(torch.autograd.Function):
    """One covered call: the forward is ``op.run(*inputs)``, the backward ``op.backward``."""

    @staticmethod
    def forward(ctx, op, *inputs):
        ctx.op = op
        ctx.set_materialize_grads(False)
        out = op.run(*inputs)
        if out is inputs[0]:  # in place (a += b)
            ctx.mark_dirty(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        op = ctx.op
        if grad is None:
            return (None,) * (1 + op.arity)
        return (None, *(op.plain_backward(grad) if op.plain else op.backward(grad)))


def _few_inputs_adjoint(grad, weight, p, size):
    """The adjoint of ``conv2d`` with few input channels (an image layer, groups 1) as one GEMM
    and a col2im (:func:`clear_native._fusion._col2im`): for the one to four channels of an
    image the library's transposed convolution is several times slower (the MNIST model's
    5x5 image layer: 5 ms for 64 images)."""
    n, c, ho, wo = grad.shape
    cin, kh, kw = weight.shape[1:]
    cols = torch.matmul(weight.reshape(c, -1).t(), grad.reshape(n, c, -1))  # (N, C_in kh kw, L)
    return _col2im(cols.view(n, cin, kh, kw, ho, wo), tuple(size), p["stride"], p["padding"], p["dilation"])


def _transpose_conv(grad, weight, p, size):
    """The adjoint of ``conv2d(x, weight, **p)`` for an input of spatial ``size``."""
    k, (h, w) = weight.shape[-2:], grad.shape[-2:]
    extra = [size[i] - ((n - 1) * p["stride"][i] - 2 * p["padding"][i] + p["dilation"][i] * (k[i] - 1) + 1)
             for i, n in enumerate((h, w))]
    return F.conv_transpose2d(grad, weight, None, p["stride"], p["padding"], extra, p["groups"], p["dilation"])


def own_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's own per-channel range (min, max over its pixels; over its features for
    a flat (N, D) input): the z^B box where no input bounds are given."""
    dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)
    return x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class _Op:
    """A covered call: its inputs (detached), position in the forward pass, rule state."""

    arity = 1

    def __init__(self, seq: int, *inputs: torch.Tensor):
        self.seq, self.plain, self.dead = seq, False, False
        self.inputs = tuple(t.detach() for t in inputs)
        self.versions = tuple(t._version for t in inputs)

    def check(self) -> None:
        if any(t._version != v for t, v in zip(self.inputs, self.versions)):
            raise ValueError("Clear(method='lrp'): an input of a convolution / linear layer / sum was "
                             "modified in place after the call; LRP needs its forward value")


class _Affine(_Op):
    """conv2d / linear with weight ``w`` (out first), optional bias; rule z+, flat or epsilon.

    ``first``: the input layer's rule, or None for a layer above it: ``"flat"`` (zennit's
    ``Flat``), ``"zplus"`` (z+ as above it) or ``("zb", low, high)`` (zennit's ``ZBox``: the
    input bounded by ``low`` / ``high``, tensors broadcastable to it; None, None: each
    image's own range, :func:`own_range`)."""

    def __init__(self, seq, x, w, b, conv: dict | None, first):
        super().__init__(seq, x)
        if first == "zplus":
            first = None
        self.w, self.b, self.conv, self.first = w.detach(), None if b is None else b.detach(), conv, first

    def run(self, x):
        if self.conv is None:
            return F.linear(x, self.w, self.b)
        p = self.conv
        return F.conv2d(x, self.w, self.b, p["stride"], p["padding"], p["dilation"], p["groups"])

    def folded(self, seq, x, mean, var, gamma, beta, eps) -> "_Affine":
        """This layer with an eval BatchNorm after it folded in (zennit's MergeBatchNorm)."""
        scale = (gamma if gamma is not None else torch.ones_like(var)) / (var + eps) ** 0.5
        bias = self.b if self.b is not None else torch.zeros_like(mean)
        shift = (bias - mean) * scale + (beta if beta is not None else 0)
        w = self.w * scale.view(-1, *(1,) * (self.w.dim() - 1))
        return _Affine(seq, x, w, shift, self.conv, self.first)

    def _lin(self, x, w):
        return F.linear(x, w) if self.conv is None else F.conv2d(
            x, w, None, self.conv["stride"], self.conv["padding"], self.conv["dilation"], self.conv["groups"])

    def _adj(self, grad, w):
        if self.conv is None:
            return grad @ w
        if (self.conv["groups"] == 1 and w.shape[1] <= 3 * FEW_INPUT_CHANNELS and grad.dim() == 4
                and not is_batchedtensor(grad)):  # not inside a batched (vmap) pass
            return _few_inputs_adjoint(grad, w, self.conv, self.inputs[0].shape[-2:])
        return _transpose_conv(grad, w, self.conv, self.inputs[0].shape[-2:])

    def prepare(self) -> None:
        x = self.inputs[0]
        if isinstance(self.first, tuple):  # z^B: x W - low W+ - high W-
            low, high = self.first[1:] if self.first[1] is not None else own_range(x)
            low, high = (b.to(x).expand_as(x) for b in (low, high))
            wp, wn = self.w.clamp(min=0), self.w.clamp(max=0)
            stack = self.conv is not None and self.conv["groups"] == 1
            self.zb = (torch.cat([x, low, high], -3) if stack else None, torch.cat([self.w, wp, wn], 1),
                       ((x, self.w), (low, wp), (high, wn)))
            z = self._lin(x, self.w) - self._lin(low, wp) - self._lin(high, wn)
        elif self.first:  # flat: inputs and weights ones, no bias
            z = self._lin(torch.ones_like(x[:1]), torch.ones_like(self.w))
            self.box = self.w.new_ones(1, 1, *self.w.shape[-2:]) if self.conv else None
        elif self.conv is not None:  # z+
            self.xp, wp = x.clamp(min=0), self.w.clamp(min=0)
            self.xn = x.clamp(max=0) if bool((x < 0).any()) else None
            z = self._lin(self.xp, wp)
            if self.xn is None:
                self.wz = wp
            else:
                wn = self.w.clamp(max=0)
                z = z + self._lin(self.xn, wn)
                self.wz = torch.cat([wp, wn], 1) if self.conv["groups"] == 1 else (wp, wn)
        else:  # epsilon
            z = F.linear(x, self.w)
        self.inv = 1 / stabilize(z)

    def backward(self, grad):
        s = grad * self.inv
        if isinstance(self.first, tuple):
            inputs, stacked, ((x, w), (low, wp), (high, wn)) = self.zb
            if inputs is not None:  # one adjoint of [W, W+, W-]: (x, low, high) . it, signed
                k = x.shape[-3]
                both = inputs * self._adj(s, stacked)
                return (both[..., :k, :, :] - both[..., k:2 * k, :, :] - both[..., 2 * k:, :, :],)
            return (x * self._adj(s, w) - low * self._adj(s, wp) - high * self._adj(s, wn),)
        if self.first:  # all-ones weights: one box filter of the sum over output channels
            if self.conv is None:
                return (s.sum(-1, keepdim=True).expand(*s.shape[:-1], self.w.shape[-1]),)
            if self.conv["groups"] == 1:
                box = _transpose_conv(s.sum(-3, keepdim=True), self.box, self.conv, self.inputs[0].shape[-2:])
                return (box.expand(*box.shape[:-3], self.w.shape[1], *box.shape[-2:]),)
            return (self._adj(s, torch.ones_like(self.w)),)
        if self.conv is None:
            return (self.inputs[0] * (s @ self.w),)
        if self.xn is None:
            return (self.xp * self._adj(s, self.wz),)
        if isinstance(self.wz, tuple):
            return (self.xp * self._adj(s, self.wz[0]) + self.xn * self._adj(s, self.wz[1]),)
        both, k = self._adj(s, self.wz), self.xp.shape[-3]
        return (self.xp * both[..., :k, :, :] + self.xn * both[..., k:, :, :],)

    def plain_backward(self, grad):
        return (self._adj(grad, self.w),)


class _Sum(_Op):
    """``a + b`` (or ``a += b``): norm rule, ``R_a = a R / stab(a + b)``."""

    arity = 2

    def __init__(self, seq, a, b, inplace: bool):
        super().__init__(seq, a, b)
        if inplace:  # the forward overwrites a: keep its value
            self.inputs = (self.inputs[0].clone(), self.inputs[1])
        self.inplace = inplace

    def run(self, a, b):
        return a.add_(b) if self.inplace else a + b

    def prepare(self) -> None:
        a, b = self.inputs
        self.inv = 1 / stabilize(a + b)

    def backward(self, grad):
        s = grad * self.inv
        return self.inputs[0] * s, self.inputs[1] * s

    def plain_backward(self, grad):
        return grad, grad


class _AvgPool(_Op):
    """Average pooling with whole windows (kernel, stride, padding; pads count): norm rule."""

    def __init__(self, seq, x, kernel, stride, padding):
        super().__init__(seq, x)
        self.k, self.s, self.p = _pair(kernel), _pair(stride), _pair(padding)
        c = x.shape[-3]
        self.ones = x.new_full((c, 1, *self.k), 1 / (self.k[0] * self.k[1]))
        self.conv = {"stride": self.s, "padding": self.p, "dilation": (1, 1), "groups": c}

    def run(self, x):
        return F.avg_pool2d(x, self.k, self.s, self.p)

    def prepare(self) -> None:
        self.inv = 1 / stabilize(self.run(self.inputs[0]))

    def backward(self, grad):
        return (self.inputs[0] * self.plain_backward(grad * self.inv)[0],)

    def plain_backward(self, grad):
        return (_transpose_conv(grad, self.ones, self.conv, self.inputs[0].shape[-2:]),)


class _MaxPool(_Op):
    """Max-pooling: the plain gradient (winner takes all) as one scatter-add per pass."""

    def __init__(self, seq, x, args: tuple):
        super().__init__(seq, x)
        self.args, self.size = args, x.shape

    def run(self, x):
        out, idx = F.max_pool2d_with_indices(x, *self.args)
        self.idx = idx.reshape(*idx.shape[:-2], -1)
        return out

    def prepare(self) -> None:
        pass

    def backward(self, grad):
        flat = grad.reshape(*grad.shape[:-2], -1)
        zeros = flat.new_zeros(*flat.shape[:-1], self.size[-2] * self.size[-1])
        return (zeros.scatter_add(-1, self.idx, flat).reshape(*grad.shape[:-2], *self.size[-2:]),)

    plain_backward = backward
