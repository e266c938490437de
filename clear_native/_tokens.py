"""The feature layer ``f`` of an explainer and its (N, D, h, w) grid: CNNs and token models.

The class maps of :class:`clear_native.Clear` live on the last spatial feature layer.
For a CNN it is the input of the last spatial reducer (global pooling or flatten, module
or functional; recorded by ``relu_rule(watch_features=True)`` during the forward pass)
or the output of the module named by ``layer=``: already an (N, K, h, w) map.

Token models (vision transformers) have no such map: the head reads a class token or the
mean of the patch tokens (N, T, D). Where the model says its patch grid, ``f`` is the
**input of its last transformer block** (every path from the image to the logits passes
it, and behind a class-token head the patch tokens reach the logits only through that
block's attention: after it their gradient is zero), and its patch tokens are reshaped to
their (N, D, h, w) grid, the prefix tokens (class, distillation and register tokens)
dropped:

* timm ViT / DeiT / BEiT-style models: ``model.patch_embed.grid_size``,
  ``model.num_prefix_tokens``, ``model.blocks`` (with ``dynamic_img_size``, the grid of
  the image through ``patch_embed.dynamic_feat_size``);
* torchvision ``VisionTransformer``: ``image_size // patch_size``, one class token,
  ``model.encoder.layers``;
* channels-last models (timm Swin: ``model.output_fmt == "NHWC"``): ``f`` is found as for a
  CNN (the input of the head's pooling) and permuted from (N, h, w, D) to (N, D, h, w).

Elsewhere ``reshape=`` (as pytorch-grad-cam's ``reshape_transform``) maps the feature
layer's output to (N, D, h, w). It is applied to the head's gradients as well (batched
over classes: its input's first dimension is classes x images), so it must only select,
reshape and permute.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

Reshape = Callable[[torch.Tensor], torch.Tensor]

RESHAPE_HINT = ("pass reshape= (a callable mapping the feature layer's output to (N, D, h, w), "
                "as pytorch-grad-cam's reshape_transform; for patch tokens (N, T, D) e.g. "
                "lambda t: t[:, 1:].unflatten(1, (h, w)).permute(0, 3, 1, 2))")


@dataclass(frozen=True)
class _Tokens:
    """Patch tokens (M, prefix + h w, D) on a grid the model declares."""

    prefix: int
    grid: tuple[int, int]
    dynamic: Callable[[tuple[int, int]], tuple[int, int]] | None = None  # image size -> grid

    def reshape(self, f: torch.Tensor, image_size) -> tuple[Reshape | None, str]:
        if f.dim() == 4:  # a map already (e.g. the patch embedding's convolution)
            return None, "map{at}"
        grids = [self.grid] + ([tuple(self.dynamic(tuple(image_size)))] if self.dynamic else [])
        for h, w in grids:
            if f.dim() == 3 and f.shape[1] == self.prefix + h * w:
                prefix = self.prefix
                dropped = f", {prefix} prefix token{'s' if prefix != 1 else ''} dropped" if prefix else ""
                return (lambda t: t[:, prefix:].unflatten(1, (h, w)).permute(0, 3, 1, 2),
                        f"token grid {h}x{w}{{at}}{dropped}")
        raise ValueError(f"the feature layer's output has shape {tuple(f.shape)}, not the model's "
                         f"patch tokens (N, {self.prefix} + {self.grid[0]} x {self.grid[1]}, D); "
                         + RESHAPE_HINT)


class _ChannelsLast:
    """(M, h, w, D) feature maps (timm's ``output_fmt == "NHWC"``)."""

    @staticmethod
    def reshape(f: torch.Tensor, image_size) -> tuple[Reshape | None, str]:
        if f.dim() != 4:
            raise ValueError(f"expected a channels-last (N, h, w, D) feature map, got shape "
                             f"{tuple(f.shape)}; " + RESHAPE_HINT)
        return (lambda t: t.permute(0, 3, 1, 2)), "channels-last map{at}"


def _declared_layout(model: nn.Module):
    """(layout, block whose input is the feature layer) from what the model, or else the first
    of its submodules that says anything (a ViT inside a normalising wrapper), says."""
    for module in model.modules():
        layout, block = _says(module)
        if layout is not None:
            return layout, block
    return None, None


def _says(model: nn.Module):
    """(layout, block whose input is the feature layer) that ``model`` itself declares."""
    if getattr(model, "output_fmt", None) == "NHWC":
        return _ChannelsLast(), None
    embed, blocks = getattr(model, "patch_embed", None), getattr(model, "blocks", None)
    if (embed is not None and getattr(embed, "grid_size", None) is not None
            and isinstance(getattr(model, "num_prefix_tokens", None), int)
            and isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks)):
        dynamic = embed.dynamic_feat_size if (getattr(model, "dynamic_img_size", False)
                                              and hasattr(embed, "dynamic_feat_size")) else None
        grid = tuple(int(g) for g in embed.grid_size)
        return _Tokens(int(model.num_prefix_tokens), grid, dynamic), blocks[-1]
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if (isinstance(getattr(model, "class_token", None), nn.Parameter)
            and isinstance(getattr(model, "image_size", None), int)
            and isinstance(getattr(model, "patch_size", None), int)
            and isinstance(layers, nn.Sequential) and len(layers)):  # torchvision ViT
        g = model.image_size // model.patch_size
        return _Tokens(1, (g, g)), layers[-1]
    return None, None


@dataclass
class FeatureSite:
    """Where an explainer reads its feature layer ``f`` and how ``f`` becomes a grid.

    Fields:
        module: the hooked module; None: ``f`` is found during the forward pass (the
            input of the last spatial reducer).
        name: its name in ``model.named_modules()`` (for messages), or None.
        use_input: ``f`` is the module's input (a transformer's last block), not its output.
        named: the user named the module (``layer=``).
        layout: the model's declared layout (patch tokens, channels-last), or None.
        reshape: the user's ``reshape=`` callable, or None.
    """

    module: nn.Module | None
    name: str | None
    use_input: bool
    named: bool
    layout: object | None
    reshape: Reshape | None

    @staticmethod
    def of(model: nn.Module, layer_module: nn.Module | None, layer: str | None,
           reshape: Reshape | None) -> "FeatureSite":
        layout, block = _declared_layout(model)
        if layer_module is not None:
            return FeatureSite(layer_module, layer, False, True, layout, reshape)
        if block is not None:
            name = next((n for n, m in model.named_modules() if m is block), None)
            return FeatureSite(block, name, True, False, layout, reshape)
        return FeatureSite(None, None, False, False, layout, reshape)

    @contextlib.contextmanager
    def watch(self, mode):
        """While active, the input / output of ``module`` is the rule ``mode``'s feature layer."""
        if self.module is None:
            yield
            return
        if self.use_input:
            handle = self.module.register_forward_pre_hook(
                lambda m, args: mode.mark_feature(args[0] if args else None))
        else:
            handle = self.module.register_forward_hook(lambda m, args, out: mode.mark_feature(out))
        try:
            yield
        finally:
            handle.remove()

    def grid(self, f: torch.Tensor, image_size, where: str) -> tuple[Reshape | None, str]:
        """(reshape to (N, D, h, w) or None where ``f`` is one already, description of ``f``)."""
        at = (f"input of {self.name!r}" if self.use_input else f"output of {self.name!r}") \
            if self.module is not None else "input of the last global pooling or flatten"
        if self.reshape is not None:
            return self.reshape, f"reshape= of the {at}"
        if self.layout is not None:
            try:
                fn, what = self.layout.reshape(f, image_size)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            return fn, what.format(at=f" of the {at}")
        if f.dim() != 4:
            raise ValueError(f"{where}: the feature layer ({at}) has shape {tuple(f.shape)}, not an "
                             f"(N, K, h, w) map, and the model does not say its patch grid; name a spatial "
                             "layer with layer=, or " + RESHAPE_HINT)
        return None, f"map of the {at}"
