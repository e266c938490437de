"""Fused back-projection of ``conv -> [BatchNorm] -> ReLU -> max-pool`` blocks, and a
faster input gradient for convolutions of few input channels (the image layer).

:class:`fused_relu_rule` is :class:`clear_native._relu_rules.relu_rule` that also
watches the forward pass for blocks whose backward it can do in one native pass:
a 2-D convolution (groups=1), optionally an eval-mode batch norm, a ReLU and a
max-pool with disjoint windows, each feeding only the next. Such a max-pool runs
as :class:`_PoolBlock`, an autograd node whose inputs are the convolution's input
and the ReLU's output. Its backward takes one of two routes:

* fast: the signal at the pool's output goes straight to the convolution's input
  with :func:`clear_native.deconv.unpool_deconv` (un-pool, ReLU rule, transposed
  convolution with the batch norm's scale folded into the weight), and the ReLU's
  output gets no signal, so the block's own autograd nodes do nothing;
* plain: the signal is un-pooled to the ReLU's output, and the block's own nodes
  (ReLU rule, batch norm, convolution backward) run as usual.

Which one is decided once the forward pass is over (:meth:`fused_relu_rule.finalize`),
from the autograd graph of the output: the fast route only where the block's
convolution, batch norm and ReLU outputs reach the output through the pool alone.
Where something else also uses them (a residual connection, a second head), the
signals must be summed before the ReLU rule, which only the plain route does.

Convolutions with at most :data:`FEW_INPUT_CHANNELS` input channels run as
:class:`_ConvFewInputs`, whose backward is a GEMM + col2im.

The same records find the chain below a feature layer along which a deconvnet class
response stays rank one (:meth:`fused_relu_rule.rank_one_chain`, used by
:mod:`clear_native._rank_one`).

The model is never modified; results equal the plain autograd pass up to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clear_native._relu_rules import _ReLU, _ReLUInplace, relu_rule
from clear_native.deconv import unpool_deconv
from clear_native.rules import Deconvnet, Rule

_CONV = {F.conv2d, torch.conv2d}
_BATCH_NORM = {F.batch_norm}
_MAX_POOL = {F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d}
_RELU_NODES = (_ReLU._backward_cls, _ReLUInplace._backward_cls)
_DTYPES = (torch.float32, torch.float64)


@dataclass
class _Produced:
    """A tensor produced inside the watched forward pass, and how (one step)."""

    out: torch.Tensor
    version: int
    kind: str                      # "conv", "scale" (eval batch norm), "relu"
    src: _Produced | None = None   # the step before (None for a conv)
    nodes: tuple = ()              # autograd nodes of the chain, conv first
    # conv: its input and geometry; scale: the per-channel factor (C,)
    conv_input: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    input_version: int = 0
    scale: torch.Tensor | None = None

    def current(self, t: torch.Tensor) -> bool:
        return self.out is t and t._version == self.version

    def current_input(self) -> bool:
        """The conv's input is unchanged since the conv (same autograd node)."""
        return self.conv_input._version == self.input_version


@dataclass
class _Site:
    """One fused block: what its fast backward needs, and whether it may take it."""

    weight: torch.Tensor           # (C, C_in, kh, kw), batch-norm scale folded in
    input_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    rule: Rule
    chain: tuple                   # autograd nodes that must feed only the next step
    node: object = None            # the _PoolBlock node
    below_node: object = None      # deconvnet: the node of a ReLU whose output is the conv input
    fast: bool = False
    rectify: bool = False          # fast, and that ReLU's rule applied in the same pass
    # Set by the forward pass, dropped by fused_relu_rule.release():
    conv_input: torch.Tensor | None = None
    below: torch.Tensor | None = None      # that ReLU's input
    output: torch.Tensor | None = None     # the pooled output
    indices: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def project(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fast route: the signal at the pool's output -> (tensor, its signal): the
        conv's input, or the input of the ReLU below it (rectify route)."""
        g = unpool_deconv(grad, self.indices, self.weight, self.input_size, pooled=self.mask,
                          stride=self.stride, padding=self.padding, dilation=self.dilation,
                          rule=self.rule, rectify_output=self.rectify)
        return (self.below if self.rectify else self.conv_input), g


class _PoolBlock(torch.autograd.Function):
    """Max-pool of a ReLU output whose backward may skip the block (see module doc)."""

    @staticmethod
    def forward(ctx, conv_input, below, relu_out, site: _Site, kernel, stride, padding, ceil_mode):
        pooled, indices = _max_pool2d_with_indices(relu_out, kernel, stride, padding, ceil_mode)
        ctx.site = site
        ctx.relu_shape = relu_out.shape
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(indices)
        # The ReLU mask at a switch is pooled > 0 (gradient / guided rules only).
        mask = (pooled > 0).to(pooled.dtype) if site.rule.reads_activation else None
        ctx.save_for_backward(indices)  # plain route; the fast one reads the site
        site.indices, site.mask = indices, mask
        return pooled, indices

    @staticmethod
    def backward(ctx, grad, _grad_indices):
        none = (None,) * 5
        if grad is None:
            return (None, None, None) + none
        (indices,) = ctx.saved_tensors
        site = ctx.site
        if site.fast:
            _, g = site.project(grad)
            return ((None, g, None) if site.rectify else (g, None, None)) + none
        n, c, h, w = ctx.relu_shape
        flat = grad.new_zeros(n, c, h * w).scatter_add_(2, indices.flatten(2), grad.flatten(2))
        return (None, None, flat.view(n, c, h, w)) + none


def _max_pool2d_with_indices(x: torch.Tensor, kernel, stride, padding, ceil_mode):
    """torch's ``max_pool2d_with_indices`` (same values, switches, ties and NaN), taken in
    channels-last memory where ``x`` is NCHW: torch's CPU kernel for NCHW does not
    vectorise, and the copies in and out cost less than it loses (MNIST model, N=48:
    2.8 ms instead of 9.8 for 32x28x28, 1.1 instead of 4.0 for 64x14x14)."""
    if x.device.type != "cpu" or x.shape[1] < 8 or not x.is_contiguous():
        return torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, [1, 1], ceil_mode)
    pooled, indices = torch.ops.aten.max_pool2d_with_indices(
        x.contiguous(memory_format=torch.channels_last), kernel, stride, padding, [1, 1], ceil_mode)
    return pooled.contiguous(), indices.contiguous()


class _ConvFewInputs(torch.autograd.Function):
    """``conv2d`` whose backward (input gradient only: the weights are frozen) is one
    GEMM and a col2im (``F.fold``). For the few input channels of an image layer this
    is about twice as fast as the library's transposed convolution, which is built
    for many channels on both sides."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.geometry = (stride, padding, dilation)
        ctx.input_size = tuple(x.shape[-2:])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 6
        (weight,) = ctx.saved_tensors
        n, c, ho, wo = grad.shape
        cin, kh, kw = weight.shape[1:]
        cols = torch.matmul(weight.reshape(c, -1).t(), grad.reshape(n, c, -1))  # (N, C_in kh kw, L)
        return (_col2im(cols.view(n, cin, kh, kw, ho, wo), ctx.input_size, *ctx.geometry),) + (None,) * 5


def _col2im(cols: torch.Tensor, size, stride, padding, dilation) -> torch.Tensor:
    """``F.fold`` of (N, C, kh, kw, Ho, Wo) columns into (N, C, H, W): one strided add per
    kernel tap into a padded plane. For the few channels of an image layer this is about
    4x faster than ``F.fold`` (measured on the MNIST model's 3x3 image layer, N=48)."""
    n, c, kh, kw, ho, wo = cols.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    h, w = size
    # The padded plane must hold every tap's reach and the (H, W) input window.
    hp = max(h + 2 * ph, (kh - 1) * dh + (ho - 1) * sh + 1)
    wp = max(w + 2 * pw, (kw - 1) * dw + (wo - 1) * sw + 1)
    out = cols.new_zeros(n, c, hp, wp)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            out[:, :, y0:y0 + (ho - 1) * sh + 1:sh, x0:x0 + (wo - 1) * sw + 1:sw] += cols[:, :, ky, kx]
    return out[:, :, ph:ph + h, pw:pw + w]


FEW_INPUT_CHANNELS = 4  # convolutions with at most this many input channels use _ConvFewInputs


def _arg(args: tuple, kwargs: dict, pos: int, name: str, default=None):
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def _pair(v):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 1:
        return (int(v[0]), int(v[0]))
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    return None


def _frozen(*tensors) -> bool:
    return all(t is None or not t.requires_grad for t in tensors)


def _graph_users(root) -> tuple[set, dict]:
    """(nodes reachable from the autograd node ``root``, how many edges point at each)."""
    users: dict = {}
    seen, stack = {root}, [root]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            users[nxt] = users.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen, users


@dataclass
class RankOneChain:
    """Steps from the feature layer down to a convolution (top first: ``("relu", None)``,
    ``("scale", (C,))`` for an eval batch norm, ``("matrix", (C_out, C_in))`` for a 1x1
    convolution), that convolution's weight and geometry, and its input."""

    steps: tuple
    weight: torch.Tensor
    stride: tuple
    padding: tuple
    dilation: tuple
    conv_input: torch.Tensor


class fused_relu_rule(relu_rule):
    """:class:`relu_rule` that also fuses ``conv -> [BN] -> ReLU -> max-pool`` blocks.

    Call :meth:`finalize` with the model's output once the forward pass is done;
    until then (or without it) every block takes the plain route. ``blocks=False``
    keeps only the forward records (:meth:`rank_one_chain`): torch's own nodes run.
    """

    def __init__(self, rule: str | Rule, *, blocks: bool = True, **watch):
        super().__init__(rule, **watch)
        if self.rule.kernel_id is None:
            raise ValueError(f"fused_relu_rule: the native kernel has no {self.rule.name!r} rule")
        self.blocks = blocks  # False: only the records (rank_one_chain), no fused blocks
        self._made: dict[int, _Produced] = {}
        self.sites: list[_Site] = []
        self._graph: tuple = (None, set(), {})  # (root, _graph_users(root)), walked once

    def _users(self, root) -> tuple[set, dict]:
        """_graph_users(root), once per root (rank_one_chain and finalize walk the same graph)."""
        if self._graph[0] is not root:
            self._graph = (root, *_graph_users(root))
        return self._graph[1:]

    def _lookup(self, t, kinds) -> _Produced | None:
        if not isinstance(t, torch.Tensor):
            return None
        rec = self._made.get(id(t))
        return rec if rec is not None and rec.kind in kinds and rec.current(t) else None

    def _keep(self, rec: _Produced) -> None:
        self._made[id(rec.out)] = rec

    def _dispatch(self, func, types, args, kwargs):
        if not torch.is_grad_enabled():
            return super()._dispatch(func, types, args, kwargs)
        if func in _CONV:
            return self._conv(func, args, kwargs)
        if func in _BATCH_NORM:
            return self._batch_norm(func, args, kwargs)
        if func in _MAX_POOL:
            return self._max_pool(func, args, kwargs)
        x = _arg(args, kwargs, 0, "input")
        src = self._lookup(x, ("conv", "scale"))
        out = super()._dispatch(func, types, args, kwargs)
        if (src is not None and isinstance(out, torch.Tensor) and isinstance(out.grad_fn, _RELU_NODES)
                and out.grad_fn.upper is None):  # ReLU6's mask is not the pooled-output sign
            self._keep(_Produced(out, out._version, "relu", src=src, nodes=src.nodes + (out.grad_fn,)))
        return out

    def _conv(self, func, args, kwargs):
        x, weight = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        bias = _arg(args, kwargs, 2, "bias")
        geometry = [_pair(_arg(args, kwargs, i, name, d)) for i, name, d in
                    ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1))]
        fusable = (isinstance(x, torch.Tensor) and x.requires_grad and x.dim() == 4
                   and isinstance(weight, torch.Tensor) and weight.dim() == 4
                   and _arg(args, kwargs, 6, "groups", 1) == 1 and None not in geometry
                   and _frozen(weight, bias) and weight.dtype == x.dtype)
        if (fusable and self.blocks and x.device.type == "cpu" and x.shape[1] <= FEW_INPUT_CHANNELS
                and x.dtype in _DTYPES):
            out = _ConvFewInputs.apply(x, weight, bias, *geometry)
        else:
            out = func(*args, **kwargs)
        if fusable and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            self._keep(_Produced(out, out._version, "conv", nodes=(out.grad_fn,), conv_input=x,
                                 input_version=x._version, weight=weight.detach(), stride=geometry[0],
                                 padding=geometry[1], dilation=geometry[2]))
        return out

    def _batch_norm(self, func, args, kwargs):
        x = _arg(args, kwargs, 0, "input")
        src = self._lookup(x, ("conv",))
        out = func(*args, **kwargs)
        mean, var = _arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")
        weight, bias = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")
        training, eps = _arg(args, kwargs, 5, "training", False), _arg(args, kwargs, 7, "eps", 1e-5)
        if (src is not None and not training and mean is not None and var is not None
                and _frozen(weight, bias) and isinstance(out, torch.Tensor) and out.grad_fn is not None):
            scale = torch.rsqrt(var.detach().to(x.dtype) + eps)
            if weight is not None:
                scale = scale * weight.detach().to(x.dtype)
            self._keep(_Produced(out, out._version, "scale", src=src, nodes=src.nodes + (out.grad_fn,),
                                 scale=scale))
        return out

    def _max_pool(self, func, args, kwargs):
        x = _arg(args, kwargs, 0, "input")
        relu = self._lookup(x, ("relu",))
        fused = self._site(relu, x, args, kwargs) if relu is not None and self.blocks else None
        if fused is None:
            return func(*args, **kwargs)
        site, conv_input, below, kernel, stride, padding, ceil_mode = fused
        pooled, indices = _PoolBlock.apply(conv_input, below, x, site, kernel, stride, padding, ceil_mode)
        site.node, site.conv_input, site.below, site.output = pooled.grad_fn, conv_input, below, pooled
        self.sites.append(site)
        with_indices = func is F.max_pool2d_with_indices or (
            func is F.max_pool2d and bool(_arg(args, kwargs, 6, "return_indices", False)))
        return (pooled, indices) if with_indices else pooled

    def _site(self, relu: _Produced, x, args, kwargs):
        """(site, conv input, ReLU-below input or None, kernel, stride, padding, ceil_mode)
        of the fused block ending in this max-pool call, or None where it cannot fuse."""
        kernel = _pair(_arg(args, kwargs, 1, "kernel_size"))
        stride = _pair(_arg(args, kwargs, 2, "stride", None) or kernel)
        padding = _pair(_arg(args, kwargs, 3, "padding", 0))
        dilation = _pair(_arg(args, kwargs, 4, "dilation", 1))
        if None in (kernel, stride, padding, dilation) or dilation != (1, 1):
            return None
        if kernel[0] > stride[0] or kernel[1] > stride[1]:  # overlapping windows: sums at switches
            return None
        conv = relu.src if relu.src.kind == "conv" else relu.src.src
        cin = conv.conv_input
        if (x.dim() != 4 or x.dtype not in _DTYPES or x.device.type != "cpu" or not cin.requires_grad
                or cin.dtype != x.dtype or not conv.current_input()):
            return None
        weight = conv.weight
        if relu.src.kind == "scale":
            weight = weight * relu.src.scale.view(-1, 1, 1, 1)
        site = _Site(weight=weight, input_size=tuple(cin.shape[-2:]), stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, rule=self.rule, chain=relu.nodes)
        # deconvnet: a ReLU (out of place) right below the conv can apply its rule in the
        # same pass (rectify route), its input then gets the signal.
        below = self._lookup(cin, ("relu",)) if isinstance(self.rule, Deconvnet) else None
        below_input = None
        if below is not None and below.src.out is not below.out and below.src.current(below.src.out):
            below_input, site.below_node = below.src.out, below.nodes[-1]
        ceil_mode = bool(_arg(args, kwargs, 5, "ceil_mode", False))
        return site, cin, below_input, list(kernel), list(stride), list(padding), ceil_mode

    def finalize(self, output: torch.Tensor) -> None:
        """Picks each block's route from the autograd graph of ``output`` (see module doc)
        and drops the forward records."""
        self._made.clear()
        if not self.sites or not isinstance(output, torch.Tensor) or output.grad_fn is None:
            self._graph = (None, set(), {})
            return
        seen, users = self._users(output.grad_fn)
        self._graph = (None, set(), {})  # not needed once the routes are chosen
        for site in self.sites:
            site.fast = site.node in seen and all(users.get(n, 0) == 1 for n in site.chain)
            # The ReLU below feeds only the conv (whose node points at it) and this node.
            site.rectify = site.fast and site.below_node is not None and users.get(site.below_node, 0) == 2

    def rank_one_chain(self, f: torch.Tensor) -> RankOneChain | None:
        """The chain ``conv -> [BN] -> ReLU [-> 1x1 conv [-> ReLU]]...`` whose output is
        the feature layer ``f``, where a deconvnet signal stays rank one
        (:mod:`clear_native._rank_one`); None where ``f`` is not such a chain's output or
        something else uses its steps. Call before :meth:`finalize` (it drops the records)."""
        if not isinstance(self.rule, Deconvnet) or not isinstance(f, torch.Tensor) or f.grad_fn is None:
            return None
        kinds = ("relu", "scale", "conv")
        steps, nodes, rec = [], [], self._lookup(f, kinds)
        while rec is not None:
            if rec.kind != "conv":  # ReLU / batch norm: the step below is linked (in place too)
                steps.append(("relu", None) if rec.kind == "relu" else ("scale", rec.scale))
                nodes.append(rec.nodes[-1])
                rec = rec.src
                continue
            nodes.append(rec.nodes[0])
            below = self._lookup(rec.conv_input, kinds) if rec.current_input() else None
            if below is None or tuple(rec.weight.shape[-2:]) != (1, 1) or rec.stride != (1, 1) \
                    or rec.padding != (0, 0):
                break
            steps.append(("matrix", rec.weight[:, :, 0, 0]))  # a 1x1 conv: (C_out, C_in)
            rec = below
        if rec is None:
            return None
        if not rec.current_input() or not rec.conv_input.requires_grad:
            return None
        _, users = self._users(f.grad_fn)
        if any(users.get(n, 0) != 1 for n in nodes[1:]):  # nodes[0] is f's own node
            return None
        return RankOneChain(tuple(steps), rec.weight, rec.stride, rec.padding, rec.dilation, rec.conv_input)

    def release(self) -> None:
        """Drops the tensors the sites keep (call when the backward passes are done)."""
        for site in self.sites:  # also breaks the site <-> node cycle
            site.conv_input = site.below = site.output = site.indices = site.mask = None
            site.node = site.below_node = None
            site.chain = ()
        self._graph = (None, set(), {})


