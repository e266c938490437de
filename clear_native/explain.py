"""CLEAR maps of an image classifier: per-class response maps -> per-pixel dominance.

``Clear(model, method)`` computes one response map per class at input resolution
(paper eq. 1-3) and reduces them, class chunk by class chunk, to the per-pixel
dominant class and response (eq. 4-5), runner-up, weakest class and the target's
positive / negative focus with the streaming :func:`clear_native.dominance`.

Choices this module makes where the paper is silent (see ``docs`` of ``Clear``):

* Back-projection = a vector-Jacobian product from the last spatial feature layer
  ``f`` to the input, with every ReLU's backward replaced by the method's rule
  (:mod:`clear_native._relu_rules`). Max-pool backward routes through the forward
  switches (un-pooling), convolution backward is the transposed convolution.
  What enters at ``f`` for class ``c`` (``signal="response"``, the default) is the
  class map's rectified response ``g_c * relu(M_c)`` (:mod:`clear_native._response`:
  on a C-kernel last conv + GAP, ``relu(z_L^c)`` through kernel ``c``);
  ``signal="logit"`` projects the class logit's gradient instead (for a GAP + linear
  head, ``W[c]`` spread uniformly over the feature map).
* On CPU, with one class per backward pass (the default for N >= 16), each
  ``conv -> [eval BatchNorm] -> ReLU -> max-pool`` block whose intermediate outputs
  only feed the next step is back-projected in one native pass
  (:func:`clear_native.deconv.unpool_deconv`: un-pool, ReLU rule and transposed
  convolution, touching only the non-zero pooled signals), and convolutions of at
  most 4 input channels (the image layer) take their input gradient as one GEMM +
  col2im (:mod:`clear_native._fusion`). With the deconvnet rule, where the layers
  above the topmost such block ignore the image in their backward (frozen convs and
  linear layers, deconvnet ReLUs, eval BatchNorm, average pools, sums, reshapes), their
  per-class signal is the same for every image: it is computed once per class from a
  one-image forward pass and broadcast. Same maps as torch's own backward nodes, up
  to float rounding.
* Biases take part in the forward pass (they decide the pooling switches and the
  ReLU masks) but are not projected backward: a transposed convolution has no
  bias, as in Zeiler & Fergus's deconvnet.
* Colour channels of the projection are reduced to one value per pixel by
  ``channel_reduce``: ``"sum"`` (signed sum over channels; default of guided and
  gradient, whose sign says whether the pixel raises the class), ``"max_abs"``
  (largest absolute value over channels; default of deconvnet, whose sign at the
  input is only the first layer's filter polarity) or ``"l2"`` (Euclidean norm).
* ``"cam"`` class maps live on the same feature layer ``f`` and are defined for any head.
  A linear head on the globally pooled ``f`` gives ``W[c] . f(i, j) + b[c]`` (bias
  included: the spatial mean is the logit) through the fused ``project_dominance``
  operator; a C-kernel last convolution + GAP gives its own class maps. Any other head
  (MLP, LayerNorm + linear, functional pooling of a nonlinear head, token pooling) gives the
  per-position contribution ``h w M_c = h w sum_k f dy_c/df`` + the head's offset spread
  evenly (:mod:`clear_native._response`, scaled by ``h w`` so that its spatial mean is the
  logit too: for GAP + linear it is ``W[c] . f + b[c]`` again), from one batched backward
  pass from the logits to ``f`` per class chunk. Maps are upsampled bilinearly
  (``align_corners=False``).
* Token models (vision transformers): ``f`` is the input of the last transformer block,
  its patch tokens reshaped to their grid where the model says it (timm, torchvision),
  by ``reshape=`` elsewhere (:mod:`clear_native._tokens`).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from clear_native._fusion import TopShortcut, fused_relu_rule
from clear_native._relu_rules import covered, relu_rule
from clear_native._response import ResponseSignal
from clear_native._tokens import FeatureSite
from clear_native.dominance import Dominance, TensorFields, dominance
from clear_native.project import project_dominance

logger = logging.getLogger(__name__)

METHODS = ("deconvnet", "guided", "gradient", "cam")
CHANNEL_REDUCE = ("sum", "max_abs", "l2")
SIGNALS = ("response", "logit")
# What the back-projection methods send down by default (see Clear's docstring for the
# measurements behind each choice).
DEFAULT_SIGNAL = {"deconvnet": "response", "guided": "response", "gradient": "response"}
DEFAULT_CHANNEL_REDUCE = {"deconvnet": "max_abs", "guided": "sum", "gradient": "sum"}
DEFAULT_CLASS_CHUNK = 16  # back-projection methods: classes per batched backward pass


def default_class_chunk(device: torch.device, batch: int) -> int:
    """Classes per batched backward pass when the caller gives none.

    CUDA: 16 (one batched pass fills the GPU). CPU: about 16 images' worth of
    signals per pass (16 // N classes, at least 1). On CPU, torch's batched
    backward (``is_grads_batched``) has no batching rule for the convolution and
    max-pool backward kernels: it runs them one class at a time and then stacks
    the results, so a large chunk only adds copies (measured on an MNIST ALL-CNN,
    N=64: 10 classes in one pass cost ~1.5x ten single-class passes).
    """
    if device.type == "cuda":
        return DEFAULT_CLASS_CHUNK
    return max(1, DEFAULT_CLASS_CHUNK // max(batch, 1))


# CPU back-projection: images per forward + class passes. Smaller batches keep the
# saved activations and backward buffers in cache (MNIST ALL-CNN, N=64 on a 2-core
# EPYC, torch's own backward nodes: 16 images at a time ~25% faster than 64); once
# a chunk has run through fused conv -> ReLU -> max-pool blocks (clear_native._fusion),
# whose kernels split the work by image, the following chunks take 64 images (same
# model, fused: ~1.35x faster than 16). The results are the same either way.
CPU_IMAGE_CHUNK = 16
CPU_FUSED_IMAGE_CHUNK = 64

# Back-projection through conv -> [BN] -> ReLU -> max-pool blocks in one native pass
# (clear_native._fusion) where the backward is unbatched; False: torch's own nodes
# everywhere (same maps up to rounding; the tests compare the two).
FUSE_BLOCKS = True


@dataclass
class ClearMaps(TensorFields):
    """CLEAR maps of a batch of images.

    Map fields are ``(N, H, W)`` at the input's resolution; class fields are int64
    **global** class ids (indices into the model's logits), ``-1`` where no class
    qualifies (see :class:`clear_native.Dominance` for the tie / NaN policy).

    Fields:
        dominant_class, dominant_response: argmax / max over the considered classes.
        runner_up_class, runner_up_response: second best class and its response.
        weakest_class, weakest_response: argmin / min.
        target: (N,) target classes (the prediction unless given).
        target_response: (N, H, W) response of the target class (positive focus).
        rival_class, rival_response: best class other than the target (negative focus).
        prediction: (N,) predicted classes (argmax of the logits, over all classes).
        logits: (N, C) the model's output.
        method: the back-projection method.
        signal: what was back-projected (``"response"`` or ``"logit"``; None for ``"cam"``).
        classes: the global class ids considered: None (all C classes), a (C',)
            tensor (``classes=`` list), or an (N, k) tensor of each image's top-k
            classes (``classes=k``; one extra column holds the target where it is
            not in the top-k, ``-1`` for the images that need no extra column).
        class_maps: (N, C', H, W) per-class maps in the order of ``classes`` (all
            classes when ``classes`` is None), only with ``keep_class_maps=True``.
            Padded ``-1`` slots hold NaN.
        num_classes: C, the model's number of classes.
    """

    dominant_class: torch.Tensor
    dominant_response: torch.Tensor
    runner_up_class: torch.Tensor
    runner_up_response: torch.Tensor
    weakest_class: torch.Tensor
    weakest_response: torch.Tensor
    target: torch.Tensor
    target_response: torch.Tensor
    rival_class: torch.Tensor
    rival_response: torch.Tensor
    prediction: torch.Tensor
    logits: torch.Tensor
    method: str
    classes: torch.Tensor | None = None
    class_maps: torch.Tensor | None = None
    num_classes: int = 0
    signal: str | None = None

    def render(self, *args, **kwargs):
        """The CLEAR image (see :func:`clear_native.render.render`)."""
        from clear_native.render import render

        return render(self, *args, **kwargs)


def reduce_channels(maps: torch.Tensor, rule: str, dim: int) -> torch.Tensor:
    """Reduces the colour channels ``dim`` of back-projected maps to one value per pixel.

    ``"sum"``: signed sum; ``"max_abs"``: max of absolute values; ``"l2"``: Euclidean norm.
    """
    if rule == "sum":
        return maps.sum(dim)
    if rule == "max_abs":
        return maps.abs().amax(dim)
    if rule == "l2":
        return torch.linalg.vector_norm(maps, dim=dim)
    raise ValueError(f"channel_reduce must be one of {CHANNEL_REDUCE}, got {rule!r}")


class _LinearCam:
    """cam class maps ``W[c] . f(i, j) + b[c]``: a linear head on the globally pooled
    features ``f`` (N, K, h, w), or a 1x1 class convolution (``f`` its input) + GAP."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, feats: torch.Tensor, how: str):
        self.weight, self.bias, self.feats, self.how = weight, bias, feats, how

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        """(N, B, h, w) for the class ids (N, B)."""
        w = self.weight[ids].to(self.feats.dtype)                        # (N, B, K)
        low = torch.einsum("nkhw,nbk->nbhw", self.feats, w)
        if self.bias is not None:
            low = low + self.bias[ids].to(self.feats.dtype)[:, :, None, None]
        return low


class _MapsCam:
    """cam class maps that the model computes: a C-kernel last convolution + GAP."""

    how = "class maps of the last convolution"

    def __init__(self, maps: torch.Tensor):
        self.class_maps = maps  # (N, C, h, w)

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        return self.class_maps.gather(1, ids[:, :, None, None].expand(-1, -1, *self.class_maps.shape[2:]))


class _ContributionCam:
    """cam class maps of any other head: ``h w M_c``, the per-position contribution
    ``sum_k f dy_c/df`` (+ the offset spread evenly) of :class:`ResponseSignal`, one
    batched backward pass from the logits to the feature layer per class chunk."""

    how = "head contribution"

    def __init__(self, source: ResponseSignal, num_classes: int):
        self.source, self.c = source, num_classes

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        n, b = ids.shape
        y = self.source.logits
        grad_out = torch.zeros(b, n, self.c, dtype=y.dtype, device=y.device)
        grad_out.scatter_(2, ids.t().unsqueeze(2), 1)
        m = self.source.class_maps(self.source.head_gradient(grad_out, last), grad_out)  # (B, N, h, w)
        return (m * (m.shape[-2] * m.shape[-1])).transpose(0, 1)


class Clear:
    """CLEAR explainer of an image classifier ``model: (N, ch, H, W) -> (N, C)`` logits.

    Args:
        model: any ``nn.Module``; it is never modified (no hooks left, modes,
            ``requires_grad`` flags and buffers unchanged, no ``.grad`` accumulated).
        method: ``"deconvnet"`` (paper, Zeiler & Fergus rule: the backward signal is
            rectified at every ReLU), ``"guided"`` (guided backprop: rectified and
            masked by the forward activation), ``"gradient"`` (plain gradient) or
            ``"cam"`` (class activation maps at the feature layer ``f``, upsampled: for a
            GAP + linear head ``W[c] . f + b[c]``, for a C-kernel last convolution + GAP
            its class maps, for any other head the per-position contribution
            ``sum_k f dy_c/df`` scaled by ``h w`` (+ the head's offset spread evenly), whose
            spatial mean is the logit as well; module doc). All methods need the model to
            be differentiable from ``f`` up (``"cam"``) or from the images up.
        signal: back-projection methods: what is sent down for class ``c``.
            ``"response"`` (default for all three; the paper's eq. 1-3): the class
            map's response at the last spatial feature layer ``f``: with the head's
            gradient ``g_c = dy_c/df``, the class map ``M_c(i, j) = sum_k f g_c``
            (+ the head's offset spread evenly, so that ``sum_ij M_c = y_c``) and the
            signal ``g_c * relu(M_c)``. On the paper's network (C-kernel last conv +
            GAP) that is ``relu(z_L^c)`` through kernel c's transposed convolution;
            for GAP + linear ``M_c ~ W[c] . f(i, j) + b[c]``; for flatten + linear or
            MLP heads the gradient-times-features contribution
            (:mod:`clear_native._response`). ``"logit"``: the gradient of the class
            logit (as Captum's ``Deconvolution`` / ``GuidedBackprop`` / ``Saliency``),
            which behind a GAP is the same at every position of ``f``.
            Why ``"response"`` is the default for every rule: on the shipped MNIST
            model (first 1000 test images, ``benchmarks/sensitivity.py``) the predicted
            class dominates the strong pixels of correctly classified digits 71% / 84% /
            70% of the time (deconvnet / guided / gradient) with the response, 12% / 32% /
            10% with the logit (chance: 10%), at a similar causal effect
            (:func:`clear_native.metrics.class_sensitivity`; README table).
        rectify: ``signal="response"``: project ``relu(M_c)`` (True, default: the
            paper's ALL-CNN has a ReLU after the class convolution, ``z_L >= 0``; measured,
            the signed ``M_c`` drops the share to 15-22% with negative causal effects) or
            the signed ``M_c`` (False).
        layer: the name (as in ``model.named_modules()``) of the module whose output is
            the feature map ``f`` (``"cam"`` and ``signal="response"``); default: the
            input of the last global pooling (module or functional) or flatten of a
            spatial map, and for vision transformers the input of the last block
            (:mod:`clear_native._tokens`).
        reshape: a callable mapping the feature layer's output to an (N, D, h, w) map
            (as pytorch-grad-cam's ``reshape_transform``), for token models whose patch
            grid the model does not say (timm and torchvision ViTs, timm Swin: automatic).
            It is applied to the head's gradients too, so it must only select, reshape
            and permute.
        channel_reduce: back-projection methods: how the input's colour channels are
            reduced to one value per pixel: ``"sum"``, ``"max_abs"``, ``"l2"``; default
            (None) ``"max_abs"`` for deconvnet, ``"sum"`` for guided and gradient. Measured
            (README): for deconvnet the magnitude gives the higher share (81% vs 71%) and
            the paper's Table 1 pair nearest the paper (62 / 49 vs 32 / 72; paper 80 /
            43), both with a positive causal effect; for guided and gradient the signed
            sum gives the larger causal effect at an equal or near share.
        class_chunk: classes per batched backward pass (back-projection methods;
            default :func:`default_class_chunk`: 16 on CUDA, 16 // N on CPU) or per
            projection chunk (``"cam"``, default: the operator's).
            Memory is O(N H W (1 + class_chunk)) beyond the model's own forward graph.
        interpolation: ``"cam"`` upsampling mode (``"bilinear"`` or ``"nearest"``).
    """

    def __init__(self, model: nn.Module, method: str = "deconvnet", *, signal: str | None = None,
                 rectify: bool = True, layer: str | None = None, channel_reduce: str | None = None,
                 class_chunk: int | None = None, interpolation: str = "bilinear", reshape=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Clear: model must be a torch.nn.Module, got {type(model).__name__}")
        if method not in METHODS:
            raise ValueError(f"Clear: method must be one of {METHODS}, got {method!r}")
        if channel_reduce is None:
            channel_reduce = DEFAULT_CHANNEL_REDUCE.get(method, "sum")
        if channel_reduce not in CHANNEL_REDUCE:
            raise ValueError(f"Clear: channel_reduce must be one of {CHANNEL_REDUCE}, got {channel_reduce!r}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"Clear: interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        _check_chunk(class_chunk)
        if method == "cam":
            if signal is not None:
                raise ValueError("Clear: signal= applies to the back-projection methods "
                                 f"{METHODS[:3]}; method='cam' projects its class maps directly")
        else:
            signal = DEFAULT_SIGNAL[method] if signal is None else signal
            if signal not in SIGNALS:
                raise ValueError(f"Clear: signal must be one of {SIGNALS}, got {signal!r}")
            for arg, value in (("layer", layer), ("reshape", reshape)):
                if value is not None and signal != "response":
                    raise ValueError(f"Clear: {arg}= names the feature layer of method='cam' or "
                                     f"signal='response', got method={method!r}, signal={signal!r}")
        if reshape is not None and not callable(reshape):
            raise TypeError(f"Clear: reshape must be a callable (N, ...) -> (N, D, h, w), got "
                            f"{type(reshape).__name__}")
        if not isinstance(rectify, bool):
            raise TypeError(f"Clear: rectify must be a bool, got {type(rectify).__name__}")
        self.model = model
        self.method = method
        self._warned_no_rule = False
        self.signal = signal
        self.rectify = rectify
        self._site = FeatureSite.of(model, _named_module(model, layer) if layer is not None else None,
                                    layer, reshape)
        self.channel_reduce = channel_reduce
        self.class_chunk = class_chunk
        self.interpolation = interpolation
        self.layer = layer
        self.reshape = reshape
        # How the last call got its class maps (head path and feature layer), for reports.
        self.last_source: str | None = None

    def __repr__(self) -> str:
        return (f"Clear(model={type(self.model).__name__}, method={self.method!r}, "
                f"signal={self.signal!r}, channel_reduce={self.channel_reduce!r}, "
                f"class_chunk={self.class_chunk})")

    def __call__(self, images: torch.Tensor, target: torch.Tensor | None = None, *,
                 classes: int | list[int] | torch.Tensor | None = None,
                 keep_class_maps: bool = False, class_chunk: int | None = None) -> ClearMaps:
        """CLEAR maps of ``images`` (N, ch, H, W).

        Args:
            images: (N, ch, H, W) floating point, on the model's device.
            target: (N,) class ids, or None for the predicted class.
            classes: None (all classes), a list / 1-D tensor of global class ids, or an
                int ``k``: each image's top-k predicted classes (plus its target when
                the target is outside the top-k).
            keep_class_maps: also return the (N, C', H, W) per-class maps.
            class_chunk: overrides the constructor's ``class_chunk`` for this call.

        Returns:
            A :class:`ClearMaps`; every class field holds global class ids.
        """
        _check_images(images)
        _check_chunk(class_chunk)
        chunk = class_chunk if class_chunk is not None else self.class_chunk
        with _preserve_state(self.model), torch.inference_mode(False):
            if self.method == "cam":
                return self._cam(images, target, classes, keep_class_maps, chunk)
            return self._backproject(images, target, classes, keep_class_maps, chunk)

    # -- back-projection methods ------------------------------------------------------

    def _backproject(self, images, target, classes, keep, chunk) -> ClearMaps:
        n, step = images.shape[0], CPU_IMAGE_CHUNK
        # Image chunks on CPU, where per-image results do not depend on the batch:
        # no module in training mode (batch statistics) and one class table for all
        # images (top-k tables may differ in width between chunks).
        if (images.device.type != "cpu" or n <= step or isinstance(classes, int)
                or any(m.training for m in self.model.modules())):
            return self._backproject_batch(images, target, classes, keep, chunk)[0]
        if target is not None:
            target = _as_target(target, n, images.device)
        parts, start = [], 0
        while start < n:
            stop = min(start + step, n)
            part, fused = self._backproject_batch(images[start:stop], None if target is None else
                                                  target[start:stop], classes, keep, chunk)
            parts.append(part)
            start = stop
            if fused:  # the fused blocks parallelise over images: larger chunks from now on
                step = max(step, CPU_FUSED_IMAGE_CHUNK)
        return _cat_maps(parts)

    def _backproject_batch(self, images, target, classes, keep, chunk) -> ClearMaps:
        x = images.detach().clone().requires_grad_(True)
        chunk = chunk or default_class_chunk(x.device, x.shape[0])
        # One class per backward pass (CPU default for N >= 16): conv -> ReLU -> max-pool
        # blocks back-project in one native pass (clear_native._fusion); batched passes
        # (is_grads_batched) keep torch's own nodes.
        fuse = (FUSE_BLOCKS and chunk == 1 and x.device.type == "cpu"
                and not torch.is_autocast_enabled("cpu"))  # fused kernels: float32 / float64
        response = self.signal == "response"
        rule = (fused_relu_rule if fuse else relu_rule)(
            self.method, watch_features=response, named_layer=self._site.module is not None)
        top = None
        try:
            with torch.enable_grad(), _frozen_parameters(self.model):
                with rule as mode, (self._site.watch(mode) if response else contextlib.nullcontext()):
                    logits = self.model(x)
                _check_logits(logits, images)
                self._check_rule_applied(mode)
                if not logits.requires_grad:
                    raise ValueError(
                        f"Clear(method={self.method!r}): the model's output does not depend "
                        "differentiably on the images; use method='cam' or a differentiable model")
                source = None
                if response:
                    source, where = self._response(mode, logits, x, self.rectify, images.shape[-2:],
                                                   "use signal='logit'")
                    self.last_source = f"class response at the {where}"
                else:
                    self.last_source = "gradient of the class logit"
                if fuse:  # routes from the graph of what is back-projected
                    mode.finalize(source.features if response else logits)
                n, c = logits.shape
                det = logits.detach()
                prediction = det.argmax(1)
                target = _check_target(target, n, c, images.device, prediction)
                table, local_target, pad = _class_table(classes, det, target)
                count = table.shape[-1]
                # deconvnet, logit signal: the top layers' per-class signal is the same for
                # every image (clear_native._fusion.TopShortcut): once per class, from one image.
                if fuse and not response and table.dim() == 1:
                    top = TopShortcut.make(self.model, x, mode, logits)
                state, kept = None, []
                for start in range(0, count, chunk):
                    stop = min(start + chunk, count)
                    ids = table[..., start:stop]                       # (B,) or (N, B)
                    ids = ids.expand(n, -1) if ids.dim() == 1 else ids  # (N, B)
                    ids = torch.where(ids < 0, target.view(-1, 1), ids)  # padded slots: any valid id
                    grad_out = torch.zeros(stop - start, n, c, dtype=logits.dtype, device=logits.device)
                    grad_out.scatter_(2, ids.t().unsqueeze(2), 1)
                    grad = self._class_grad(source, top, table, logits, x, grad_out, start, stop >= count)
                    maps = reduce_channels(grad, self.channel_reduce, 2).transpose(0, 1)  # (N, B, H, W)
                    if pad is not None:
                        maps = maps.masked_fill(pad[:, start:stop, None, None], float("nan"))
                    state = dominance(maps, local_target, state=state, class_offset=start, num_classes=count)
                    if keep:
                        kept.append(maps)
                    del grad, maps
        finally:
            if fuse:
                mode.release()
            if top is not None:
                top.release()
        maps = _result(state, table, target, prediction, det, self.method, classes,
                       torch.cat(kept, 1) if keep else None, c)
        maps.signal = self.signal
        return maps, fuse and bool(mode.sites)

    def _check_rule_applied(self, mode) -> None:
        """Warns (once per explainer) where the method's rule found no activation to act on,
        or left some of the model's activations with their plain gradient (none covers them)."""
        if self.method == "gradient" or self._warned_no_rule:
            return
        unruled = mode.unruled()
        if mode.applied and not unruled:
            return
        self._warned_no_rule = True
        left = ", ".join(f"{name} ({count} call{'s' * (count > 1)})" for name, count in unruled.items())
        if not mode.applied:
            what = ("no activation that the rule covers was called in the forward pass, so the rule "
                    "changes nothing and these maps are plain gradients (method='gradient')"
                    + (f"; called: {left}" if left else ""))
        else:
            what = (f"{left} kept their plain gradient (no {self.method} rule covers them), so these "
                    f"maps mix the rule at {mode.applied} activation call(s) with plain gradients")
        warnings.warn(
            f"Clear(method={self.method!r}) on {type(self.model).__name__}: {what}. The rules reach "
            f"{covered()}; not activations inside TorchScript or exported graphs", UserWarning, stacklevel=4)

    @staticmethod
    def _class_grad(source, top, table, logits, x, grad_out, start, last) -> torch.Tensor:
        """(B, N, ch, H, W): the input-space maps of one class chunk (one-hot ``grad_out``)."""
        if source is not None:  # the class response, from the feature layer down
            return source.backproject(grad_out, last)
        if top is not None:  # one class, from the topmost fused block's conv input down
            below, signal = top.signal(int(table[start]))
            (grad,) = torch.autograd.grad(below, x, signal, retain_graph=not last)
            return grad.unsqueeze(0)
        if grad_out.shape[0] == 1:  # one class: a plain backward pass
            (grad,) = torch.autograd.grad(logits, x, grad_out[0], retain_graph=not last)
            return grad.unsqueeze(0)
        (grad,) = torch.autograd.grad(logits, x, grad_out, retain_graph=not last,
                                      is_grads_batched=True)  # (B, N, ch, H, W)
        return grad

    def _feature_layer(self, mode, size) -> tuple[torch.Tensor | None, object, str]:
        """(f as recorded by the rule ``mode`` or None, its reshape to (N, D, h, w) or None,
        a description), once the forward pass is done."""
        f = mode.feature_layer()
        if f is None:
            return None, None, ""
        return (f, *self._site.grid(f, size, repr(self)))

    def _response(self, mode, logits, x, rectify, size, instead) -> tuple[ResponseSignal, str]:
        """The class response at the feature layer that ``mode`` recorded, and where that is."""
        f, to_grid, what = self._feature_layer(mode, size)
        source = ResponseSignal.make(f, logits, x, rectify, repr(self), named=self._site.named,
                                     to_grid=to_grid, instead=instead)
        return source, f"{what}, shape {tuple(source.features.shape)}"

    # -- cam --------------------------------------------------------------------------

    def _cam(self, images, target, classes, keep, chunk) -> ClearMaps:
        # Parameters keep requires_grad: f then depends differentiably on them even where the
        # image path is cut; the backward passes ask for d logits / d f only (no weight grads).
        with torch.enable_grad():
            logits, source = self._cam_source(images)
            n, c = logits.shape
            prediction = logits.argmax(1)
            target = _check_target(target, n, c, images.device, prediction)
            table, local_target, pad = _class_table(classes, logits, target)
            size = tuple(images.shape[-2:])
            count = table.shape[-1]

            if isinstance(source, _LinearCam) and table.dim() == 1 and not keep:  # the fused operator
                weight, bias = source.weight, source.bias
                if classes is not None:
                    weight, bias = weight[table], None if bias is None else bias[table]
                feats = source.feats
                state = project_dominance(feats, weight.to(feats.dtype),
                                          None if bias is None else bias.to(feats.dtype),
                                          size=size, mode=self.interpolation, target=local_target,
                                          class_chunk=chunk)
                return _result(state, table, target, prediction, logits, self.method, classes, None, c)

            # Explicit class maps, chunk by chunk (top-k, kept maps, other heads).
            chunk = chunk or 64
            state, kept = None, []
            for start in range(0, count, chunk):
                stop = min(start + chunk, count)
                ids = table[..., start:stop]
                ids = (ids.expand(n, -1) if ids.dim() == 1 else ids).clamp(min=0)  # (N, B)
                up = _upsample(source.maps(ids, stop >= count), size, self.interpolation)
                if pad is not None:
                    up = up.masked_fill(pad[:, start:stop, None, None], float("nan"))
                state = dominance(up, local_target, state=state, class_offset=start, num_classes=count)
                if keep:
                    kept.append(up)
                del up
        return _result(state, table, target, prediction, logits, self.method, classes,
                       torch.cat(kept, 1) if keep else None, c)

    def _cam_source(self, images):
        """(detached logits (N, C), class-map source): one forward pass under the plain
        gradient rule, which records the feature layer ``f`` and changes nothing in the
        forward; the last nn.Linear / nn.Conv2d calls decide whether a fused path applies."""
        x = images.detach().clone().requires_grad_(True)
        calls = _LastCalls()
        with calls.watch(self.model):
            with relu_rule("gradient", watch_features=True, named_layer=self._site.module is not None) as mode, \
                    self._site.watch(mode):
                logits = self.model(x)
        _check_logits(logits, images)
        f, to_grid, what = self._feature_layer(mode, images.shape[-2:])
        grid = None if f is None else f.detach() if to_grid is None else to_grid(f.detach())
        if grid is not None and grid.dim() == 4:
            fast = _exact_cam(grid, logits, calls)
            if fast is not None:
                self.last_source = f"{fast.how} at the {what}, shape {tuple(grid.shape)}"
                return logits.detach(), fast
        source = ResponseSignal.make(f, logits, x, False, repr(self), named=self._site.named,
                                     to_grid=to_grid, instead="use method='deconvnet', 'guided' or "
                                     "'gradient' with signal='logit'")
        self.last_source = f"{_ContributionCam.how} at the {what}, shape {tuple(source.features.shape)}"
        return logits.detach(), _ContributionCam(source, logits.shape[1])


# -- helpers ----------------------------------------------------------------------------

def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"Clear: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"Clear: images must be (N, ch, H, W), got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"Clear: images must be floating point, got {images.dtype}")


def _check_chunk(chunk) -> None:
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"Clear: class_chunk must be None or an int >= 1, got {chunk!r}")


def _check_logits(logits, images) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"Clear: the model must return (N, C) logits with N = {images.shape[0]}, got {got}")


def _as_target(target, n: int, device) -> torch.Tensor:
    """``target`` as an (N,) int64 tensor on ``device`` (type and shape checked)."""
    target = torch.as_tensor(target, device=device)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"Clear: target must hold integer class ids, got {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"Clear: target must be (N,) = ({n},), got shape {tuple(target.shape)}")
    return target.to(torch.int64)


def _check_target(target, n: int, c: int, device, prediction: torch.Tensor) -> torch.Tensor:
    if target is None:
        return prediction
    target = _as_target(target, n, device)
    if n and (int(target.min()) < 0 or int(target.max()) >= c):
        raise ValueError(f"Clear: target classes must lie in [0, {c}), got values in "
                         f"[{int(target.min())}, {int(target.max())}]")
    return target


def _class_table(classes, logits: torch.Tensor, target: torch.Tensor):
    """(table, local target, pad mask): table is (C',) shared or (N, k) per image,
    local target indexes it, pad (N, k) marks padded slots (or None)."""
    n, c = logits.shape
    device = logits.device
    if classes is None:
        return torch.arange(c, device=device), target, None
    if isinstance(classes, int) and not isinstance(classes, bool):
        if not 1 <= classes <= c:
            raise ValueError(f"Clear: classes=k must lie in [1, {c}], got {classes}")
        table = logits.topk(classes, dim=1).indices  # (N, k), best first
        hit = table == target.view(-1, 1)
        missing = ~hit.any(1)
        if bool(missing.any()):  # one extra column for the targets outside the top-k
            extra = torch.where(missing, target, torch.full_like(target, -1))
            table = torch.cat([table, extra.view(-1, 1)], 1)
            hit = table == target.view(-1, 1)
        local = hit.to(torch.uint8).argmax(1)
        pad = table < 0
        return table, local, pad if bool(pad.any()) else None
    table = torch.as_tensor(classes, device=device)
    if table.dtype.is_floating_point or table.dtype == torch.bool or table.dim() != 1 or table.numel() == 0:
        raise ValueError("Clear: classes must be None, an int k, or a non-empty 1-D list of class ids, "
                         f"got {classes!r}")
    table = table.to(torch.int64)
    if int(table.min()) < 0 or int(table.max()) >= c:
        raise ValueError(f"Clear: classes must lie in [0, {c}), got values in "
                         f"[{int(table.min())}, {int(table.max())}]")
    if table.unique().numel() != table.numel():
        raise ValueError(f"Clear: classes must not repeat, got {table.tolist()}")
    hit = table.view(1, -1) == target.view(-1, 1)  # (N, C')
    if not bool(hit.any(1).all()):
        bad = target[~hit.any(1)].tolist()
        raise ValueError(f"Clear: the target classes {bad} are not among classes={table.tolist()}; "
                         "add them to classes= or pass target=")
    return table, hit.to(torch.uint8).argmax(1), None


def _to_global(local: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Maps local class indices (N, H, W) (``-1`` = none) to global ids via ``table``."""
    safe = local.clamp(min=0)
    if table.dim() == 1:
        out = table[safe]
    else:
        out = table.gather(1, safe.flatten(1)).view_as(local)
    return torch.where(local < 0, local, out)


def _result(state: Dominance, table, target, prediction, logits, method, classes, kept, c) -> ClearMaps:
    shared_all = classes is None
    g = (lambda t: t) if shared_all else (lambda t: _to_global(t, table))
    return ClearMaps(
        dominant_class=g(state.dominant_class), dominant_response=state.dominant_response,
        runner_up_class=g(state.runner_up_class), runner_up_response=state.runner_up_response,
        weakest_class=g(state.weakest_class), weakest_response=state.weakest_response,
        target=target, target_response=state.target_response,
        rival_class=g(state.rival_class), rival_response=state.rival_response,
        prediction=prediction, logits=logits, method=method,
        classes=None if shared_all else table, class_maps=kept, num_classes=c)


def _cat_maps(parts: list[ClearMaps]) -> ClearMaps:
    """Joins the ClearMaps of consecutive image chunks (one shared class table)."""
    first = parts[0]
    values = {}
    for f in fields(ClearMaps):
        v = getattr(first, f.name)
        if f.name == "classes" or not isinstance(v, torch.Tensor):
            values[f.name] = v
        else:
            values[f.name] = torch.cat([getattr(p, f.name) for p in parts], 0)
    return ClearMaps(**values)


def _upsample(maps: torch.Tensor, size, mode: str) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(maps, size=size, mode=mode, **kwargs)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    tol = 1e-2 if a.dtype != b.dtype or torch.is_autocast_enabled() else 1e-4
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max()) if b.numel() else 1.0))


def _named_module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"Clear: layer {layer!r} is not a module of {type(model).__name__} "
                         f"(expected a name from model.named_modules())")
    return modules[layer]


class _LastCalls:
    """Records the last call of any nn.Linear and of any nn.Conv2d of a model: (module,
    input, output, the output's version counter at the time)."""

    def __init__(self):
        self.linear: tuple | None = None
        self.conv: tuple | None = None

    @contextlib.contextmanager
    def watch(self, model: nn.Module):
        def hook(key):
            def record(module, args, out):
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    setattr(self, key, (module, args[0], out, out._version))
            return record

        handles = [m.register_forward_hook(hook("linear" if isinstance(m, nn.Linear) else "conv"))
                   for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def _exact_cam(f: torch.Tensor, logits: torch.Tensor, calls: _LastCalls):
    """The exact cam source where the logits are a linear map of the global average of the
    (detached) feature map ``f`` (N, K, h, w): ``linear(GAP(f))`` (the last nn.Linear's input
    is the pooled ``f`` and its output the logits) or ``GAP(f)`` itself (C-kernel last conv:
    its 1x1 form as weights on the conv's input). None where neither holds."""
    pooled = f.mean((2, 3))
    out = logits.detach()
    if calls.linear is not None:
        lin, lin_in, lin_out, _ = calls.linear
        if _close(lin_in.detach().flatten(1), pooled) and _close(lin_out.detach(), out):
            return _LinearCam(lin.weight.detach(), None if lin.bias is None else lin.bias.detach(),
                              f.contiguous(), "linear head (fused)")
    if not _close(pooled, out):
        return None
    if calls.conv is not None:
        conv, conv_in, conv_out, version = calls.conv
        direct = (conv_out.data_ptr() == f.data_ptr() and conv_out.shape == f.shape
                  and conv_out.stride() == f.stride() and conv_out._version == version == f._version)
        if (direct and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
                and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)):
            return _LinearCam(conv.weight.detach().flatten(1), None if conv.bias is None else
                              conv.bias.detach(), conv_in.detach(), "1x1 class convolution (fused)")
    return _MapsCam(f)


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module):
    """Parameters stop requiring grad for the back-projection and get their flags back
    after it. Only the input's gradient is asked for, but some backward kernels
    (oneDNN's convolution on CPU) compute the weight gradient whenever the weight
    requires grad: freezing makes the class back-projections about 1.5x faster."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def _preserve_state(model: nn.Module):
    """Restores the model's buffers (e.g. BatchNorm running stats updated by a forward
    pass in training mode) after the call; training flags are never touched."""
    if not any(m.training for m in model.modules()):
        yield
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
