"""CLEAR maps of an image classifier: per-class response maps -> per-pixel dominance.

``Clear(model, method)`` computes one response map per class at input resolution
(paper eq. 1-3) and reduces them, class chunk by class chunk, to the per-pixel
dominant class and response (eq. 4-5), runner-up, weakest class and the target's
positive / negative focus with the streaming :func:`clear_native.dominance`.

Choices this module makes where the paper is silent (see ``docs`` of ``Clear``):

* Back-projection = a vector-Jacobian product from the last spatial feature layer
  ``f`` to the input, with every ReLU's backward replaced by the method's rule
  (:mod:`clear_native.rules`, applied by :mod:`clear_native._relu_rules`). Max-pool backward routes through the forward
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
  to float rounding (``fuse=False`` runs those).
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

import torch
import torch.nn as nn

from clear_native import rules
from clear_native._backproject import (CHANNEL_REDUCE, BackprojectionConfig, BackprojectionSource,
                                       Backprojector, Routes)
from clear_native._cam import LinearCam, Upsampled, cam_source
from clear_native._lrp import LRP_CLASS_CHUNK, LRP_DEFAULT_SIGNAL, LrpConfig, LrpSource
from clear_native._options import (SIGNALS, check_chunk as _check_chunk, check_class_scale as _check_class_scale,
                                   check_images as _check_images, check_options as _check_options,
                                   check_lrp_input, named_module as _named_module)
from clear_native._result import ClearMaps, as_target, cat_maps, check_target, class_table, result
from clear_native._tokens import FeatureSite
from clear_native.dominance import dominance
from clear_native.project import project_dominance

__all__ = ["Clear", "ClearMaps", "METHODS", "SIGNALS", "CHANNEL_REDUCE", "DEFAULT_METHOD", "default_class_chunk"]

# The default method, chosen by the sanity checks on the shipped MNIST model and the pretrained
# EfficientNet-Lite0 / Lite1 (docs/method.md, "The default"; benchmarks/sanity.py): layer-wise
# relevance propagation of the class logit with the z^B input rule is the one configuration
# that passes every check on all three; deconvnet's maps do not depend on the image where no
# max-pool switch lies below the feature layer.
DEFAULT_METHOD = "lrp"

DEFAULT_CLASS_CHUNK = 16  # back-projection methods: classes per batched backward pass
# CPU back-projection: images per forward + class passes (Clear's image_chunk). Small
# images start with larger chunks: up to CPU_CHUNK_PIXELS input pixels (H W) per chunk,
# between CPU_IMAGE_CHUNK and CPU_FUSED_IMAGE_CHUNK images. Once a chunk has run through
# fused blocks, whose kernels split the work by image, the following chunks take
# CPU_FUSED_IMAGE_CHUNK images. Measured on the 2-core Xeon (deconvnet, 10 classes): MNIST
# ALL-CNN 28x28 N=64, 64 at once 113 ms vs 16 + 48 138 ms; a CIFAR VGG 32x32 N=128, 64 at a
# time 405 ms vs 16 then 64 469 ms; at 48x48 16 to 128 within 6%; at 64x64 (N=64) and a
# ResNet-18 at 112x112 (N=32) chunks of 16 first stay best (64 at once 870 vs 700 ms,
# 2620 vs 2570 ms: the passes' working set leaves the cache).
CPU_IMAGE_CHUNK = 16
CPU_FUSED_IMAGE_CHUNK = 64
CPU_CHUNK_PIXELS = 64 * 1024


def first_image_chunk(images: torch.Tensor) -> int:
    """Images in the first CPU back-projection chunk (see CPU_CHUNK_PIXELS)."""
    pixels = max(1, images.shape[-1] * images.shape[-2])
    return min(CPU_FUSED_IMAGE_CHUNK, max(CPU_IMAGE_CHUNK, CPU_CHUNK_PIXELS // pixels))


def methods() -> tuple[str, ...]:
    """The method names: the registered rules (:mod:`clear_native.rules`), ``"cam"`` and
    ``"lrp"`` (:mod:`clear_native._lrp`)."""
    return (*rules.names(), "cam", "lrp")


METHODS = methods()  # at import; rules registered later are in methods()
# What the back-projection methods send down / how they reduce colour channels by default
# (the rules' own defaults; Clear's docstring gives the measurements behind them).
DEFAULT_SIGNAL = {**{name: rules.get(name).default_signal for name in rules.names()}, "lrp": LRP_DEFAULT_SIGNAL}
DEFAULT_CHANNEL_REDUCE = {name: rules.get(name).default_channel_reduce for name in rules.names()}


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


class Clear:
    """CLEAR explainer of an image classifier ``model: (N, ch, H, W) -> (N, C)`` logits.

    Args:
        model: any ``nn.Module``; it is never modified (no hooks left, modes,
            ``requires_grad`` flags and buffers unchanged, no ``.grad`` accumulated).
        method: a back-projection rule of :mod:`clear_native.rules`: ``"deconvnet"``
            (paper, Zeiler & Fergus rule: the backward signal is rectified at every
            ReLU), ``"guided"`` (guided backprop: rectified and masked by the forward
            activation), ``"gradient"`` (plain gradient), any registered rule, or
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
            (:func:`clear_native.metrics.class_sensitivity`; docs/method.md).
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
            (docs/method.md): for deconvnet the magnitude gives the higher share (81% vs 71%) and
            the paper's Table 1 pair nearest the paper (62 / 49 vs 32 / 72; paper 80 /
            43), both with a positive causal effect; for guided and gradient the signed
            sum gives the larger causal effect at an equal or near share.
        class_chunk: classes per batched backward pass (back-projection methods;
            default :func:`default_class_chunk`: 16 on CUDA, 16 // N on CPU) or per
            projection chunk (``"cam"``, default: the operator's).
            Memory is O(N H W (1 + class_chunk)) beyond the model's own forward graph.
        interpolation: ``"cam"`` upsampling mode (``"bilinear"`` or ``"nearest"``).
        fuse: CPU, one class per backward pass: back-project conv -> [BN] -> ReLU -> max-pool
            blocks in one native pass and take the logit's image-independent top layers
            from one image; any device and class chunk: (deconvnet, class response) start
            below the feature layer's rank-one chain (:mod:`clear_native._rank_one`)
            (module doc); False: torch's own backward nodes everywhere (same maps up to
            float rounding).
        class_scale: back-projection methods: ``"evidence"`` rescales each class's map so
            that its positive mass equals the class's rectified evidence ``sum_ij
            relu(M_c)`` (``relu(y_c)`` with ``signal="logit"``): a back-projected map's
            magnitude otherwise follows its class weights' gain through the network, and
            the argmax over classes is decided by that gain rather than by evidence
            (LRP conserves this mass by construction; cam's maps are ``M_c`` itself).
            ``"raw"``: the maps as projected. Default (None): ``"raw"`` for deconvnet
            (the paper's method exactly), ``"evidence"`` for the other rules.
        input_rule: ``method="lrp"``: the input layer's rule: ``"zb"`` (default; z^B of Montavon
            et al., the input bounded by ``input_bounds``), ``"flat"`` (zennit's EpsilonPlusFlat)
            or ``"zplus"``. Measured (docs/method.md): flat leaves the maps' pattern nearly the same
            for a photo and a noise image (rho 0.50 on EfficientNet-Lite0), z^B 0.36; z+ with
            non-negative inputs makes every class's map the same (MNIST: class agreement 84%
            after re-initialising the head).
        input_bounds: z^B's box ``(low, high)`` in the model's input space: floats, per-channel
            sequences (e.g. ``((0 - mean) / std, (1 - mean) / std)`` for normalised images) or
            tensors broadcastable to the images; default: each image's own per-channel range.
        image_chunk: CPU back-projection: images per forward + class passes (default: 16,
            up to 64 for small images (64 Ki input pixels per chunk), then 64 once a chunk
            ran through fused blocks, whose kernels split the work by image; measured on
            MNIST, CIFAR-sized and 64x64 models). The maps do not depend on it.

    After a call, ``last_source`` says where the class maps came from (head path and
    feature layer) and ``last_routes`` (back-projection methods, last image chunk) what ran: the fused
    blocks' routes, the one-image top, the classes of each backward pass.
    """

    def __init__(self, model: nn.Module, method: str = DEFAULT_METHOD, *, signal: str | None = None,
                 rectify: bool = True, layer: str | None = None, channel_reduce: str | None = None,
                 class_chunk: int | None = None, interpolation: str = "bilinear", reshape=None,
                 fuse: bool = True, image_chunk: int | None = None, class_scale: str | None = None,
                 input_rule: str | None = None, input_bounds=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Clear: model must be a torch.nn.Module, got {type(model).__name__}")
        if method not in methods():
            raise ValueError(f"Clear: method must be one of {methods()}, got {method!r}")
        rule = None if method in ("cam", "lrp") else rules.get(method)
        if channel_reduce is None:
            channel_reduce = rule.default_channel_reduce if rule else "sum"
        signal = _check_options(method, rule, signal, channel_reduce, interpolation, layer, reshape)
        class_scale = _check_class_scale(method, rule, class_scale)
        input_rule, bounds = check_lrp_input(method, input_rule, input_bounds)
        _check_chunk(class_chunk)
        _check_chunk(image_chunk, "image_chunk")
        for arg, value in (("rectify", rectify), ("fuse", fuse)):
            if not isinstance(value, bool):
                raise TypeError(f"Clear: {arg} must be a bool, got {type(value).__name__}")
        if method == "lrp" and not rectify:
            raise ValueError("Clear(method='lrp') supports the rectified response only (rectify=True): "
                             "its relevance starts from relu(M_c), the class's positive evidence")
        self.model, self.method, self.signal, self.rectify = model, method, signal, rectify
        self.channel_reduce, self.class_chunk, self.interpolation = channel_reduce, class_chunk, interpolation
        self.layer, self.reshape, self.fuse, self.image_chunk = layer, reshape, fuse, image_chunk
        self.class_scale = class_scale
        self._site = FeatureSite.of(model, _named_module(model, layer) if layer is not None else None,
                                    layer, reshape)
        self._config = None if rule is None else BackprojectionConfig(
            model, rule, signal, rectify, channel_reduce, self._site, repr(self), class_scale)
        self.input_rule = input_rule
        self._lrp = (LrpConfig(model, signal, channel_reduce, self._site, repr(self), input_rule=input_rule,
                               input_bounds=bounds) if method == "lrp" else None)
        # How the last call got its class maps, and what its back-projection ran.
        self.last_source: str | None = None
        self.last_routes: Routes | None = None

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
        n, step = images.shape[0], self.image_chunk or first_image_chunk(images)
        # Image chunks on CPU, where per-image results do not depend on the batch:
        # no module in training mode (batch statistics) and one class table for all
        # images (top-k tables may differ in width between chunks).
        if (images.device.type != "cpu" or n <= step or isinstance(classes, int)
                or any(m.training for m in self.model.modules())):
            return self._backproject_batch(images, target, classes, keep, chunk)[0]
        if target is not None:
            target = as_target(target, n, images.device)
        parts, start = [], 0
        while start < n:
            stop = min(start + step, n)
            part, fused = self._backproject_batch(images[start:stop], None if target is None else
                                                  target[start:stop], classes, keep, chunk)
            parts.append(part)
            start = stop
            if fused and self.image_chunk is None:  # fused blocks parallelise over images
                step = max(step, CPU_FUSED_IMAGE_CHUNK)
        return cat_maps(parts)

    def _backproject_batch(self, images, target, classes, keep, chunk) -> tuple[ClearMaps, bool]:
        if self.method == "lrp":
            return self._lrp_batch(images, target, classes, keep, chunk)
        x = images.detach().clone().requires_grad_(True)
        chunk = chunk or default_class_chunk(x.device, x.shape[0])
        # One class per backward pass on CPU: the fused blocks (batched passes keep torch's
        # own nodes; the fused kernels are float32 / float64).
        fuse = (self.fuse and chunk == 1 and x.device.type == "cpu"
                and not torch.is_autocast_enabled("cpu"))
        response = self.signal == "response"
        rank_one = self.fuse and response and not torch.is_autocast_enabled(x.device.type)
        with Backprojector(self._config.rule, fuse=fuse, rank_one=rank_one, watch_features=response,
                           named_layer=self._site.module is not None) as bp, \
                torch.enable_grad(), _frozen_parameters(self.model):
            source = BackprojectionSource(self._config, bp, x)
            logits = source.forward(images)
            self.last_source, self.last_routes = source.description, bp.routes
            prediction = logits.argmax(1)
            target = check_target(target, *logits.shape, images.device, prediction)
            table, local_target, pad = class_table(classes, logits, target)
            if not response and table.dim() == 1:
                bp.use_top_shortcut(self.model, x, source.logits)
            state, kept = _stream(source, table, local_target, pad, target, keep, chunk)
        maps = result(state, table, target, prediction, logits, self.method, classes, kept, logits.shape[1])
        maps.signal = self.signal
        return maps, bp.any_fused

    def _lrp_batch(self, images, target, classes, keep, chunk) -> tuple[ClearMaps, bool]:
        """``method="lrp"``: :class:`clear_native._lrp.LrpSource` through the class-chunk loop."""
        source = LrpSource(self._lrp, images.detach().clone().requires_grad_(True))
        try:
            with torch.enable_grad(), _frozen_parameters(self.model):
                logits = source.forward(images)
                prediction = logits.argmax(1)
                target = check_target(target, *logits.shape, images.device, prediction)
                table, local_target, pad = class_table(classes, logits, target)
                state, kept = _stream(source, table, local_target, pad, target, keep, chunk or LRP_CLASS_CHUNK)
        finally:
            source.release()
        self.last_source, self.last_routes = source.description, Routes(passes=source.passes)
        maps = result(state, table, target, prediction, logits, self.method, classes, kept, logits.shape[1])
        maps.signal = self.signal
        return maps, False

    # -- cam --------------------------------------------------------------------------

    def _cam(self, images, target, classes, keep, chunk) -> ClearMaps:
        # Parameters keep requires_grad: f then depends differentiably on them even where the
        # image path is cut; the backward passes ask for d logits / d f only (no weight grads).
        with torch.enable_grad():
            logits, source, self.last_source = cam_source(self.model, images, self._site, repr(self))
            self.last_routes = Routes(passes=source.passes)
            n, c = logits.shape
            prediction = logits.argmax(1)
            target = check_target(target, n, c, images.device, prediction)
            table, local_target, pad = class_table(classes, logits, target)
            size = tuple(images.shape[-2:])
            if isinstance(source, LinearCam) and table.dim() == 1 and not keep:  # the fused operator
                state = _project_linear(source, table, classes, size, self.interpolation, local_target, chunk)
                return result(state, table, target, prediction, logits, self.method, classes, None, c)
            state, kept = _stream(Upsampled(source, size, self.interpolation), table, local_target, pad,
                                  target, keep, chunk or 64)
        return result(state, table, target, prediction, logits, self.method, classes, kept, c)


def _stream(source, table: torch.Tensor, local_target, pad, target, keep: bool, chunk: int):
    """The class chunks of ``table`` through ``source.maps(ids)`` (N, B, H, W) into the
    streaming dominance: (its state, the kept (N, C', H, W) maps or None). Padded slots
    (-1) ask the source for the target's map and hold NaN."""
    n, count = target.shape[0], table.shape[-1]
    state, kept = None, []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        ids = table[..., start:stop]                       # (B,) or (N, B)
        ids = ids.expand(n, -1) if ids.dim() == 1 else ids  # (N, B)
        ids = torch.where(ids < 0, target.view(-1, 1), ids)
        maps = source.maps(ids, stop >= count)
        if pad is not None:
            maps = maps.masked_fill(pad[:, start:stop, None, None], float("nan"))
        state = dominance(maps, local_target, state=state, class_offset=start, num_classes=count)
        if keep:
            kept.append(maps)
        del maps
    return state, torch.cat(kept, 1) if keep else None


def _project_linear(source: LinearCam, table, classes, size, mode, local_target, chunk):
    """Dominance of the upsampled ``W[c] . f + b[c]`` of the table's classes, fused."""
    weight, bias, feats = source.weight, source.bias, source.feats
    if classes is not None:
        weight, bias = weight[table], None if bias is None else bias[table]
    return project_dominance(feats, weight.to(feats.dtype), None if bias is None else bias.to(feats.dtype),
                             size=size, mode=mode, target=local_target, class_chunk=chunk)


# -- helpers ----------------------------------------------------------------------------

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
