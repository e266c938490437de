"""The image-independent top of a deconvnet back-projection of the logit.

With the deconvnet rule, the backward signal of class c is the same for every image from
the logits down to the first node whose backward looks at the image: a max-pool (its
switches). So where every path from the logits to the input passes the output of the
topmost fused block through nodes whose backward ignores the image (convolutions and
linear layers with frozen weights, deconvnet ReLUs, eval batch norms, average pools,
sums, reshapes), that signal is computed once, from a forward pass over one image, and
broadcast to the batch: the top layers then cost one image per class instead of N.
Any rule whose backward ignores the forward activations qualifies (``reads_activation``
False in :mod:`clear_native.rules`: deconvnet).
"""
from __future__ import annotations

import torch

from clear_native._fusion import _Site, fused_relu_rule

# Backward ignores the forward values (given frozen weights; batch norm in eval mode).
_TOP_NODES = {
    "ConvolutionBackward0", "AddmmBackward0", "MmBackward0", "TBackward0", "AddBackward0",
    "SubBackward0", "MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1",
    "AdaptiveAvgPool2DBackward0", "AvgPool2DBackward0", "ViewBackward0", "ReshapeAliasBackward0",
    "UnsafeViewBackward0", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward4",
    "UnsqueezeBackward0", "ExpandBackward0", "PermuteBackward0", "TransposeBackward0",
    "CloneBackward0", "NativeBatchNormBackward0", "_ReLUBackward", "_ReLUInplaceBackward",
}
# Products: image-independent only while the other factor is a constant.
_PRODUCTS = {"ConvolutionBackward0", "AddmmBackward0", "MmBackward0", "NativeBatchNormBackward0"}


def independent_top(output: torch.Tensor, site: _Site) -> bool:
    """Whether every path from ``output`` back to the input passes ``site``'s pooled
    output through image-independent nodes only (see above)."""
    if output.grad_fn is None or site.node is None:
        return False
    seen, stack = {output.grad_fn}, [output.grad_fn]
    while stack:
        node = stack.pop()
        name = type(node).__name__
        if name not in _TOP_NODES:
            return False
        nexts = [nxt for nxt, _ in node.next_functions if nxt is not None]
        if name in _PRODUCTS and len(nexts) > 1:
            return False
        for nxt in nexts:
            if nxt is site.node:
                continue
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return True


class TopShortcut:
    """Per-class signals at the conv input of the topmost fused block, from one image.

    ``make`` returns None where the shortcut does not apply (a rule that reads the activations,
    no fused block on the fast route, a top that looks at the image, a model whose
    one-image forward pass differs in structure).
    """

    def __init__(self, site: _Site, probe_logits, probe_pooled, probe_mode, n: int):
        self.site, self.logits, self.pooled, self._mode, self.n = site, probe_logits, probe_pooled, probe_mode, n

    @staticmethod
    def make(model, x: torch.Tensor, mode: fused_relu_rule, logits: torch.Tensor):
        if mode.rule.reads_activation or not mode.sites or any(m.training for m in model.modules()):
            return None
        site = mode.sites[-1]
        if not site.fast or not independent_top(logits, site):
            return None
        probe = x[:1].detach().clone().requires_grad_(True)
        with fused_relu_rule(mode.rule) as probe_mode:
            probe_logits = model(probe)
        probe_mode.finalize(probe_logits)
        if (len(probe_mode.sites) != len(mode.sites) or probe_logits.shape[1:] != logits.shape[1:]
                or probe_mode.sites[-1].output.shape[1:] != site.output.shape[1:]
                or not independent_top(probe_logits, probe_mode.sites[-1])):
            probe_mode.release()
            return None
        return TopShortcut(site, probe_logits, probe_mode.sites[-1].output, probe_mode, x.shape[0])

    def signal(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tensor, class ``c``'s signal at it for all N images): the topmost fused block's
        conv input (or the input of the ReLU below it)."""
        one_hot = torch.zeros_like(self.logits)
        one_hot[:, c] = 1
        (g,) = torch.autograd.grad(self.logits, self.pooled, one_hot, retain_graph=True)
        return self.site.project(g.expand(self.n, *g.shape[1:]))

    def release(self) -> None:
        self._mode.release()
        self.logits = self.pooled = None
