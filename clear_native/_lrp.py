"""``method="lrp"``: layer-wise relevance propagation maps of every class (zennit's
``EpsilonPlusFlat(zero_params="bias")`` composite), streamed class chunk by class chunk.

Relevance flows as the backward signal: each rule's backward returns the relevance of its
input, and the input's "gradient" is the relevance map (N, ch, H, W). Rules (zennit's):

* convolutions (``F.conv2d``, grouped / depthwise too): z+ (``x+ W+ + x- W-``, bias zeroed);
  the first convolution or linear layer called on the image: flat (ones for inputs and
  weights); linear layers (``F.linear``): epsilon (``1e-6``, bias zeroed). Stabiliser as
  zennit's ``stabilize``: ``z + 1e-6 sign(z)`` with ``sign(0) = +1``;
* eval BatchNorm applied to exactly the output of a convolution / linear layer is folded into
  it (zennit's ``MergeBatchNorm``: ``W s``, ``(b - mean) s + beta``, ``s = gamma / sqrt(var +
  eps)``); any other BatchNorm keeps its plain gradient and is named in a warning;
* activations (ReLU family and the smooth ones of :mod:`clear_native._relu_rules`): pass;
* average pooling (``avg_pool2d``, ``adaptive_avg_pool2d`` with whole windows) and the sum
  of two tensors that both carry relevance (``a + b``, ``out += identity``): norm
  (``R_a = a R / stab(a + b)``);
* max-pooling: the plain gradient (winner takes all); reshapes, flatten, dropout (eval),
  cat, padding: identity routing. Everything else on the path that changes values (gates,
  LayerNorm, attention, tanh, ...) keeps its plain gradient and is named in a warning.

Nothing is hooked: a :class:`torch.overrides.TorchFunctionMode` (:class:`LrpMode`) swaps each
covered call for an autograd node of :mod:`clear_native._lrp_rules` for one forward pass. What every class's
backward pass shares is computed once (:meth:`LrpMode.prepare`): ``x+``, ``x-``, ``W+``, ``W-``
and ``1 / stab(z)``; per class and layer there is one transposed convolution (two where ``x``
has negative entries; a box filter at the flat layer) and a product. The nodes' backward
uses plain tensor ops, so ``is_grads_batched`` also runs several classes per pass.

What enters at the feature layer ``f`` for class ``c`` (``signal="response"``): with the
head's plain gradient ``g_c`` and class map ``M_c`` (:mod:`clear_native._response`),
``R_f = relu(M_c) P / sum_k P`` with ``P = relu(f g_c)`` (0 where ``sum_k P = 0``), so that
the map sums to ``sum_ij relu(M_c)`` (the head above ``f`` keeps its plain gradient);
``signal="logit"``: ``y_c`` at the logit, the composite all the way down (zennit's
``Gradient(model, composite)`` with ``attr_output = one_hot * output``).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clear_native._backproject import check_logits, feature_layer, reduce_channels
from clear_native._lrp_rules import _AvgPool, _Affine, _MaxPool, _Op, _Pass, _Ruled, _Sum, _pair
from clear_native._relu_rules import relu_rule
from clear_native._response import ResponseSignal

LRP_CLASS_CHUNK = 1  # classes per backward pass (Clear's class_chunk default for lrp)
INPUT_RULES = ("zb", "flat", "zplus")
LRP_DEFAULT_SIGNAL = "logit"  # the relevance y_c at the logit: its maps follow the head (docs/method.md)


_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_ADDS_INPLACE = {torch.Tensor.add_, torch.Tensor.__iadd__}
# Calls that only route values (or pass them unchanged): no rule needed, no warning.
_ROUTING = set("""view reshape flatten unflatten squeeze unsqueeze permute transpose t contiguous clone
    __getitem__ narrow select split chunk cat concat stack pad dropout dropout1d dropout2d dropout3d
    feature_dropout alpha_dropout to type float double half expand expand_as view_as reshape_as movedim
    flip roll unbind split_with_sizes tensor_split repeat max_pool1d max_pool3d adaptive_max_pool2d fn
    max_pool2d_with_indices __get__ identity requires_grad_ detach""".split())


def _grad_input(args, kwargs) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("input")
    return x if isinstance(x, torch.Tensor) and x.requires_grad else None


class LrpMode(relu_rule):
    """Torch function mode of one LRP forward pass (module doc): covered calls become
    :class:`_Ruled` nodes; activations pass (``relu_rule`` with a pass rule, which also
    records the feature layer with ``watch_features``).

    ``bn_names``: id of a BatchNorm's ``running_mean`` -> its module name, for warnings."""

    def __init__(self, *, watch_features: bool, named_layer: bool, bn_names: dict, input_rule="flat"):
        super().__init__(_Pass(), watch_features=watch_features, named_layer=named_layer)
        self.input_rule = input_rule
        self.ops: list[_Op] = []
        self.outputs: dict[int, tuple] = {}  # id(output) -> (output, layer, its input), during the forward
        self.bn_names, self.unfolded, self.uncovered = bn_names, [], []
        self.first_done = False

    def _apply(self, op: _Op, *inputs) -> torch.Tensor:
        self.ops.append(op)
        return _Ruled.apply(op, *inputs)

    def _dispatch(self, func, types, args, kwargs):
        x = _grad_input(args, kwargs)
        if x is None or not torch.is_grad_enabled() or kwargs.get("out") is not None:
            return super()._dispatch(func, types, args, kwargs)
        out = self._covered(func, x, args, kwargs)
        if out is not None:
            return out
        applied, unruled = self.applied, len(self._unruled)
        out = super()._dispatch(func, types, args, kwargs)
        if (self.applied == applied and len(self._unruled) == unruled and isinstance(out, torch.Tensor)
                and out.requires_grad and out is not x and getattr(func, "__name__", "") not in _ROUTING):
            self.uncovered.append((self._seq, getattr(func, "__name__", str(func))))
        return out

    def _covered(self, func, x, args, kwargs):
        """The ruled output of a covered call, or None."""
        arg = lambda i, name, default=None: args[i] if len(args) > i else kwargs.get(name, default)  # noqa: E731
        if func in (F.conv2d, torch.conv2d) and x.dim() == 4:
            p = {"stride": _pair(arg(3, "stride", 1)), "padding": arg(4, "padding", 0),
                 "dilation": _pair(arg(5, "dilation", 1)), "groups": arg(6, "groups", 1)}
            w = arg(1, "weight")
            if isinstance(p["padding"], str):
                if p["padding"] == "same" and all(d * (k - 1) % 2 == 0 for d, k in zip(p["dilation"], w.shape[-2:])):
                    p["padding"] = tuple(d * (k - 1) // 2 for d, k in zip(p["dilation"], w.shape[-2:]))
                elif p["padding"] == "valid":
                    p["padding"] = (0, 0)
                else:
                    return None
            p["padding"] = _pair(p["padding"])
            return self._affine(x, w, arg(2, "bias"), p)
        if func is F.linear:
            return self._affine(x, arg(1, "weight"), arg(2, "bias"), None)
        if func is F.batch_norm:
            return self._batch_norm(x, args, kwargs)
        if func in _ADDS or func in _ADDS_INPLACE:
            other = arg(1, "other")
            if (isinstance(other, torch.Tensor) and other.requires_grad and arg(2, "alpha", 1) == 1
                    and other.shape == x.shape and other.dtype == x.dtype):
                return self._apply(_Sum(self._seq, x, other, func in _ADDS_INPLACE), x, other)
            return None
        if func is F.avg_pool2d and x.dim() == 4:
            k = _pair(arg(1, "kernel_size"))
            s, pad = _pair(arg(2, "stride", None) or k), _pair(arg(3, "padding", 0))
            if (not arg(4, "ceil_mode", False) and (arg(5, "count_include_pad", True) or pad == (0, 0))
                    and arg(6, "divisor_override") is None):
                return self._apply(_AvgPool(self._seq, x, k, s, pad), x)
        if func is F.max_pool2d and x.dim() == 4 and not arg(6, "return_indices", False):
            k = arg(1, "kernel_size")
            pool = (k, arg(2, "stride", None) or k, arg(3, "padding", 0), arg(4, "dilation", 1),
                    arg(5, "ceil_mode", False))
            return self._apply(_MaxPool(self._seq, x, pool), x)
        if func is F.adaptive_avg_pool2d and x.dim() == 4:
            size = [x.shape[-2 + i] if o is None else o for i, o in enumerate(_pair(arg(1, "output_size")))]
            if all(n % o == 0 for n, o in zip(x.shape[-2:], size)):
                k = tuple(n // o for n, o in zip(x.shape[-2:], size))
                return self._apply(_AvgPool(self._seq, x, k, k, (0, 0)), x)
        return None

    def _affine(self, x, w, b, conv) -> torch.Tensor:
        first, self.first_done = not self.first_done, True
        op = _Affine(self._seq, x, w, b, conv, self.input_rule if first else None)
        out = self._apply(op, x)
        self.outputs[id(out)] = (out, op, x)
        return out

    def _batch_norm(self, x, args, kwargs) -> torch.Tensor:
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        a = dict(zip(names, args), **kwargs)
        layer = self.outputs.get(id(x))
        if layer is not None and layer[0] is x and not a.get("training", False) and a["running_mean"] is not None:
            op, source = layer[1], layer[2]
            folded = op.folded(self._seq, source, a["running_mean"], a["running_var"], a.get("weight"),
                               a.get("bias"), a.get("eps", 1e-5))
            op.dead = True
            out = self._apply(folded, source)
            self.outputs[id(out)] = (out, folded, source)
            return out
        name = self.bn_names.get(id(a.get("running_mean")), f"F.batch_norm (call {self._seq})")
        self.unfolded.append((self._seq, name))
        return F.batch_norm(*args, **kwargs)

    def prepare(self, feature_seq: int | None) -> None:
        """Caches of the live ops; ops above ``feature_seq`` (the head) take the plain gradient."""
        self.outputs.clear()
        for op in self.ops:
            op.plain = feature_seq is not None and op.seq > feature_seq
            if not op.dead and not op.plain:
                op.check()
                op.prepare()

    def feature_seq(self) -> int | None:
        """The last call below the feature layer (a found one is the input of the call that reduces it)."""
        if not self.watch or self._feature is None:
            return None
        return self._feature[2] - (1 if self._auto else 0)

    def release(self) -> None:
        self.ops.clear()
        self.outputs.clear()


@dataclass
class LrpConfig:
    """What :class:`LrpSource` needs of the explainer."""

    model: torch.nn.Module
    signal: str
    channel_reduce: str
    site: object        # clear_native._tokens.FeatureSite
    who: str            # the explainer's repr, for messages
    warned: list = field(default_factory=lambda: [False])  # the uncovered-ops warning, once
    input_rule: str = "zb"     # the input layer's rule: "zb", "flat" or "zplus"
    input_bounds: tuple | None = None  # z^B's (low, high) tensors; None: each image's own range

    def first_rule(self):
        """The input layer's rule as :class:`clear_native._lrp_rules._Affine` takes it."""
        if self.input_rule != "zb":
            return self.input_rule
        return ("zb", *(self.input_bounds or (None, None)))

    def bn_names(self) -> dict:
        return {id(m.running_mean): name for name, m in self.model.named_modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}


class LrpSource:
    """LRP maps of one image batch: ``forward(images)`` -> logits, ``maps(ids, last)`` -> (N, B, H, W)."""

    def __init__(self, cfg: LrpConfig, x: torch.Tensor):
        self.cfg, self.x = cfg, x
        self.response: ResponseSignal | None = None
        self.logits: torch.Tensor | None = None
        self.mode: LrpMode | None = None
        self.passes: list[int] = []
        self.description = ""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Runs the model under the LRP rules; returns the detached (N, C) logits."""
        cfg, response = self.cfg, self.cfg.signal == "response"
        mode = self.mode = LrpMode(watch_features=response, named_layer=cfg.site.named, bn_names=cfg.bn_names(),
                                   input_rule=cfg.first_rule())
        with mode, (cfg.site.watch(mode) if response else contextlib.nullcontext()):
            logits = cfg.model(self.x)
        check_logits(logits, images)
        if not logits.requires_grad:
            raise ValueError(f"{cfg.who}: the model's output does not depend differentiably on the images")
        if response:
            f, to_grid, what = feature_layer(cfg.site, mode, images.shape[-2:], cfg.who)
            self.response = ResponseSignal.make(f, logits, self.x, True, cfg.who, named=cfg.site.named,
                                                to_grid=to_grid, instead="use signal='logit'")
            self.description = f"LRP of the class response at the {what}, shape {tuple(self.response.features.shape)}"
        else:
            self.description = "LRP of the class logit"
        seq = mode.feature_seq() if response else None
        mode.prepare(seq)
        self._warn(mode, seq)
        self.logits = logits
        return logits.detach()

    def _warn(self, mode: LrpMode, seq: int | None) -> None:
        below = lambda items: [n for s, n in items if seq is None or s <= seq]  # noqa: E731
        for name in dict.fromkeys(below(mode.unfolded)):
            warnings.warn(f"{self.cfg.who}: BatchNorm {name} does not directly follow a convolution or "
                          "linear layer (or is in training mode), so it cannot be folded; it keeps its plain "
                          "gradient in the LRP maps", UserWarning, stacklevel=5)
        ops = dict.fromkeys(below(mode.uncovered) + below(mode._unruled))
        if ops and not self.cfg.warned[0]:
            self.cfg.warned[0] = True
            warnings.warn(f"{self.cfg.who}: no LRP rule covers {', '.join(ops)} on the path to the input; "
                          "they keep their plain gradient, so these maps are not a conserving LRP "
                          "decomposition there", UserWarning, stacklevel=5)

    def start(self, grad_out: torch.Tensor) -> torch.Tensor:
        """(B, N, K, h, w): the relevance at the feature layer, ``relu(M_c) P / sum_k P``."""
        g = self.response.head_gradient(grad_out, last=False)
        m = self.response.class_maps(g, grad_out).clamp(min=0)           # (B, N, h, w)
        p = (self.response.features.detach().unsqueeze(0) * g).clamp(min=0)
        total = p.sum(2, keepdim=True)
        return torch.where(total > 0, p * (m.unsqueeze(2) / torch.where(total > 0, total, 1)), 0)

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        """(N, B, H, W) maps of the class ids (N, B) (every id valid)."""
        n, c = self.logits.shape
        grad_out = torch.zeros(ids.shape[1], n, c, dtype=self.logits.dtype, device=self.logits.device)
        grad_out.scatter_(2, ids.t().unsqueeze(2), 1)
        if self.response is not None:
            top, signal = self.response.features, self.start(grad_out)
        else:
            top, signal = self.logits, grad_out * self.logits.detach().unsqueeze(0)
        batched = signal.shape[0] > 1
        self.passes.append(signal.shape[0])
        (grad,) = torch.autograd.grad(top, self.x, signal if batched else signal[0],
                                      retain_graph=not last, is_grads_batched=batched)
        if not batched:
            grad = grad.unsqueeze(0)
        return reduce_channels(grad, self.cfg.channel_reduce, 2).transpose(0, 1)

    def release(self) -> None:
        if self.mode is not None:
            self.mode.release()
