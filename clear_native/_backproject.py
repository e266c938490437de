"""The back-projection methods' map source: class maps at input resolution, class chunk
by class chunk, for :class:`clear_native.Clear`'s streaming loop.

:class:`Backprojector` owns one forward pass under a rule (:mod:`clear_native.rules`)
and everything the backward passes need until it is released: the rule's torch
function mode, the fused blocks' routes (:mod:`clear_native._fusion`), the logit
signal's one-image top (:mod:`clear_native._top_shortcut`). Leaving its ``with``
block releases them, also when an exception ends the passes early.
:class:`BackprojectionSource` runs the forward pass and answers ``maps(ids)``.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch

from clear_native import rules
from clear_native._fusion import fused_relu_rule
from clear_native._relu_rules import covered, relu_rule
from clear_native._response import ResponseSignal
from clear_native._top_shortcut import TopShortcut

CHANNEL_REDUCE = ("sum", "max_abs", "l2")
CLASS_SCALES = ("evidence", "raw")


def scale_to_evidence(maps: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Class maps (B, N, H, W) rescaled so that each map's positive mass (its sum of
    positive pixels, NaN ignored) equals the class's evidence ``mass`` (B, N).

    A back-projected map's magnitude follows the gain of its class's weights through the
    network, not its evidence; this puts every class on the scale of its rectified
    response ``sum_ij relu(M_c)`` (the mass that LRP's conservation gives by
    construction), so that the argmax over classes compares evidence. A map with no
    positive pixel keeps its values; a class with no evidence gets a zero map.
    """
    positive = torch.nansum(maps.clamp(min=0), (2, 3))
    factor = torch.where(positive > 0, mass.to(maps.dtype) / positive.clamp(min=torch.finfo(maps.dtype).tiny),
                         (mass > 0).to(maps.dtype))
    return maps * factor[..., None, None]


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


@dataclass
class Routes:
    """What the last back-projection ran: per fused block (bottom first) whether it took
    the fast route and whether the ReLU below applied its rule in the same pass, whether
    the logit's top layers came from one image, the classes of each backward pass, and how
    many class-response passes began below the feature layer's rank-one chain."""

    fast: list[bool] = field(default_factory=list)
    rectified: list[bool] = field(default_factory=list)
    top_shortcut: bool = False
    passes: list[int] = field(default_factory=list)
    rank_one_passes: int = 0  # class response passes that began rank one (clear_native._rank_one)


class Backprojector:
    """One forward pass under ``rule`` and the state its backward passes need (module doc).

    ``fuse``: conv -> [BN] -> ReLU -> max-pool blocks take the native fused pass where the
    rule has a kernel (otherwise torch's own nodes everywhere; same maps up to rounding).
    """

    def __init__(self, rule: str | rules.Rule, *, fuse: bool, rank_one: bool = False,
                 watch_features: bool = False, named_layer: bool = False):
        self.rule = rules.get(rule)
        self.fused = fuse and self.rule.kernel_id is not None
        # The forward records also serve the class response's rank-one chain, on any
        # device and class chunk (deconvnet only: clear_native._rank_one).
        self.records = self.fused or (rank_one and isinstance(self.rule, rules.Deconvnet))
        watch = {"watch_features": watch_features, "named_layer": named_layer}
        self.mode = (fused_relu_rule(self.rule, blocks=self.fused, **watch) if self.records
                     else relu_rule(self.rule, **watch))
        self.top: TopShortcut | None = None
        self.routes = Routes()

    def __enter__(self) -> Backprojector:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def rank_one_chain(self, f: torch.Tensor):
        """The feature layer's rank-one chain (:mod:`clear_native._rank_one`) or None;
        before :meth:`choose_routes`."""
        return self.mode.rank_one_chain(f) if self.records else None

    def choose_routes(self, output: torch.Tensor) -> None:
        """Fused blocks: their routes from the autograd graph of ``output`` (what is
        back-projected: the logits or the feature layer)."""
        if self.records:
            self.mode.finalize(output)
            self.routes.fast = [s.fast for s in self.mode.sites]
            self.routes.rectified = [s.rectify for s in self.mode.sites]

    def use_top_shortcut(self, model, x: torch.Tensor, logits: torch.Tensor) -> None:
        """Logit signal, one class per pass: the top layers' per-class signal from one
        image where it is the same for every image (:class:`TopShortcut`)."""
        if self.fused:
            self.top = TopShortcut.make(model, x, self.mode, logits)
            self.routes.top_shortcut = self.top is not None

    def logit_grad(self, logits: torch.Tensor, x: torch.Tensor, grad_out: torch.Tensor, class_id: int,
                   last: bool) -> torch.Tensor:
        """(B, N, ch, H, W): the input-space maps of the logits' one-hot ``grad_out`` (B, N, C);
        ``class_id``: the class of a one-class chunk shared by all images (top shortcut)."""
        self.routes.passes.append(grad_out.shape[0])
        if self.top is not None:  # one class, from the topmost fused block's conv input down
            below, signal = self.top.signal(class_id)
            (grad,) = torch.autograd.grad(below, x, signal, retain_graph=not last)
            return grad.unsqueeze(0)
        if grad_out.shape[0] == 1:  # one class: a plain backward pass
            (grad,) = torch.autograd.grad(logits, x, grad_out[0], retain_graph=not last)
            return grad.unsqueeze(0)
        (grad,) = torch.autograd.grad(logits, x, grad_out, retain_graph=not last,
                                      is_grads_batched=True)
        return grad

    @property
    def any_fused(self) -> bool:
        return self.fused and bool(self.mode.sites)

    def release(self) -> None:
        """Drops the fused sites' tensors and the shortcut's probe (idempotent)."""
        if self.records:
            self.mode.release()
        if self.top is not None:
            self.top.release()
            self.top = None


@dataclass
class BackprojectionConfig:
    """What :class:`BackprojectionSource` needs of the explainer."""

    model: torch.nn.Module
    rule: rules.Rule
    signal: str
    rectify: bool
    channel_reduce: str
    site: object        # clear_native._tokens.FeatureSite
    who: str            # the explainer's repr, for messages
    class_scale: str = "raw"  # "evidence" (scale_to_evidence) or "raw"
    warned: list = field(default_factory=lambda: [False])  # the unruled warning, once
    fixed_warned: list = field(default_factory=lambda: [False])  # warn_input_independent, once


class BackprojectionSource:
    """Back-projected class maps of one image batch: ``maps(ids)`` -> (N, B, H, W)."""

    def __init__(self, cfg: BackprojectionConfig, bp: Backprojector, x: torch.Tensor):
        self.cfg, self.bp, self.x = cfg, bp, x
        self.response: ResponseSignal | None = None
        self.logits: torch.Tensor | None = None
        self.description = ""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Runs the model under the rule; returns the detached (N, C) logits."""
        cfg, bp = self.cfg, self.bp
        response = cfg.signal == "response"
        with bp.mode as mode, (cfg.site.watch(mode) if response else contextlib.nullcontext()):
            logits = cfg.model(self.x)
        check_logits(logits, images)
        warn_unruled(cfg.rule, mode, cfg.model, cfg.warned)
        if not logits.requires_grad:
            raise ValueError(
                f"Clear(method={cfg.rule.name!r}): the model's output does not depend "
                "differentiably on the images; use method='cam' or a differentiable model")
        if response:
            f, to_grid, what = feature_layer(cfg.site, mode, images.shape[-2:], cfg.who)
            self.response = ResponseSignal.make(f, logits, self.x, cfg.rectify, cfg.who, named=cfg.site.named,
                                                to_grid=to_grid, instead="use signal='logit'")
            self.description = (f"class response at the {what}, shape "
                                f"{tuple(self.response.features.shape)}")
        else:
            self.description = "gradient of the class logit"
        if response and cfg.rectify and self.response.to_grid is None:
            self.response.chain = bp.rank_one_chain(self.response.node)
        start = self.response.features if response else logits
        if not cfg.rule.reads_activation and not cfg.fixed_warned[0]:
            warn_input_independent(cfg, start, self.x)
        bp.choose_routes(start)
        self.logits = logits
        return logits.detach()

    def maps(self, ids: torch.Tensor, last: bool) -> torch.Tensor:
        """(N, B, H, W) maps of the class ids (N, B) (every id valid)."""
        n, c = self.logits.shape
        grad_out = torch.zeros(ids.shape[1], n, c, dtype=self.logits.dtype, device=self.logits.device)
        grad_out.scatter_(2, ids.t().unsqueeze(2), 1)
        if self.response is not None:  # the class response, from the feature layer down
            self.bp.routes.passes.append(ids.shape[1])
            grad = self.response.backproject(grad_out, last)
            self.bp.routes.rank_one_passes = self.response.rank_one_passes
            mass = self.response.last_mass
        else:
            grad = self.bp.logit_grad(self.logits, self.x, grad_out, int(ids[0, 0]), last)
            mass = (grad_out * self.logits.detach().unsqueeze(0)).sum(2).clamp(min=0)  # relu(y_c)
        maps = reduce_channels(grad, self.cfg.channel_reduce, 2)
        if self.cfg.class_scale == "evidence":
            maps = scale_to_evidence(maps, mass)
        return maps.transpose(0, 1)


def check_logits(logits, images) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != images.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"Clear: the model must return (N, C) logits with N = {images.shape[0]}, got {got}")


def feature_layer(site, mode, size, who: str) -> tuple[torch.Tensor | None, object, str]:
    """(f as recorded by the rule ``mode`` or None, its reshape to (N, D, h, w) or None,
    a description), once the forward pass is done."""
    f = mode.feature_layer()
    if f is None:
        return None, None, ""
    return (f, *site.grid(f, size, who))


# Backward nodes whose signal depends on the forward pass's values even under a rule that
# ignores the activations: max-pool switches (torch's and the fused blocks'), normalisations
# by the input's own statistics, unruled nonlinearities; and products of two tensors that
# both depend on the image (attention, gates), whose backward multiplies by the other one.
_READING_NODES = ("MaxPool", "MaxUnpool", "PoolBlock", "Softmax", "LayerNorm", "GroupNorm", "Sigmoid",
                  "Tanh", "Exp", "Log", "Pow", "Sqrt", "Rsqrt")
_PRODUCT_NODES = ("Mul", "Div", "Bmm", "Mm", "Matmul", "Baddbmm", "Addmm", "Einsum")


def _reads_forward(node) -> bool:
    name = type(node).__name__
    if any(key in name for key in _READING_NODES):
        return True
    return (any(name.startswith(key) for key in _PRODUCT_NODES)
            and sum(nxt is not None for nxt, _ in node.next_functions) >= 2)


def switches_below(start: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the autograd graph from ``start`` down to the input ``x`` holds a node whose
    backward depends on the image under a rule that ignores the activations (a max-pool
    switch, a normalisation, a product of two image-dependent tensors; ``_READING_NODES``).
    Parameters are frozen during the back-projection, so a layer's weights add no edge."""
    seen, stack = set(), [start.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if _reads_forward(node):
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def warn_input_independent(cfg: BackprojectionConfig, start: torch.Tensor, x: torch.Tensor) -> None:
    """Warns once per explainer where a rule that ignores the forward activations meets no
    max-pool switch (nor another node that reads the image) below ``start``: the maps'
    detail is then the same for every image."""
    cfg.fixed_warned[0] = True
    if switches_below(start, x):
        return
    response = cfg.signal == "response"
    varies = ("only the class response on the feature layer's grid depends on the image"
              if response else "nothing in them depends on the image")
    warnings.warn(
        f"Clear(method={cfg.rule.name!r}) on {type(cfg.model).__name__}: the rule ignores the forward "
        f"activations and no max-pool switch lies between the input and the {'feature layer' if response else 'logits'}, so the "
        f"maps' detail is the same for every image ({varies}; it fails the data-randomisation sanity "
        f"check). Maps that follow the image: {_image_dependent_methods()}", UserWarning, stacklevel=5)


def _image_dependent_methods() -> str:
    names = [n for n in rules.names() if rules.get(n).reads_activation]
    return ", ".join(f"method={n!r}" for n in [*names, "cam"])


def warn_unruled(rule: rules.Rule, mode, model, warned: list) -> None:
    """Warns (once per explainer: ``warned`` holds its flag) where the rule found no
    activation to act on, or left some of the model's activations with their plain
    gradient (none covers them)."""
    if rule.plain or warned[0]:
        return
    unruled = mode.unruled()
    if mode.applied and not unruled:
        return
    warned[0] = True
    left = ", ".join(f"{name} ({count} call{'s' * (count > 1)})" for name, count in unruled.items())
    if not mode.applied:
        what = ("no activation that the rule covers was called in the forward pass, so the rule "
                "changes nothing and these maps are plain gradients (method='gradient')"
                + (f"; called: {left}" if left else ""))
    else:
        what = (f"{left} kept their plain gradient (no {rule.name} rule covers them), so these "
                f"maps mix the rule at {mode.applied} activation call(s) with plain gradients")
    warnings.warn(
        f"Clear(method={rule.name!r}) on {type(model).__name__}: {what}. The rules reach "
        f"{covered()}; not activations inside TorchScript or exported graphs", UserWarning, stacklevel=6)
