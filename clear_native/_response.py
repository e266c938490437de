"""The class-response signal of the back-projection methods (paper eq. 1-3).

What is sent down the network for class ``c`` is the class map's *response* at the
last spatial feature layer ``f`` (N, K, h, w), not the gradient of the pooled logit
(which behind a global average pooling is the same at every position). With
``g_c = d y_c / d f`` (the head's plain gradient, one batched backward pass per class
chunk) the class map is the per-position contribution to the logit,

    M_c(i, j) = sum_k f_k(i, j) g_c,k(i, j) + (y_c - sum_{k,i,j} f g_c) / (h w),

so that ``sum_ij M_c = y_c``: the head's offset (a linear head's bias) is spread evenly.
It reduces to

* C-kernel last convolution + GAP (the paper's network; ``f = z_L``):
  ``g_c = e_c / (h w)``, ``M_c = z_L^c / (h w)``;
* GAP + linear: ``g_c = W[c] / (h w)``, ``M_c = (W[c] . f(i, j) + b[c]) / (h w)``;
* flatten + linear: ``g_c = W[c]`` reshaped to (K, h, w), ``M_c = W[c] . f(i, j) + b[c] / (h w)``;
* any other head (MLP, ...): the gradient-times-input contribution above.

Token models: ``f`` is a tensor that a ``to_grid`` reshape (select, reshape, permute)
turns into the map (patch tokens of a vision transformer, channels-last maps;
:mod:`clear_native._tokens`); the head's gradient is taken at ``f`` itself and put on the
same grid, and the signal goes down from the reshaped map (zero at the dropped tokens).
``method="cam"`` uses the same class maps, scaled by ``h w`` (:class:`clear_native.Clear`).

The signal projected from ``f`` down to the input is ``g_c * relu(M_c)`` (``rectify``;
the paper's ALL-CNN has a ReLU after the class convolution, so ``z_L >= 0``) or
``g_c * M_c``: on the paper's network ``e_c relu(z_L^c) / (h w)^2``, i.e. the class
map ``z_L^c`` itself sent through kernel c's transposed convolution (``G_L^c``), then
down with the method's ReLU rule, un-pooling and transposed convolutions.
"""
from __future__ import annotations

import warnings

import torch

from clear_native._fusion import _PoolBlock
from clear_native._rank_one import collapse, head_vector


class ResponseSignal:
    """Back-projection of the class response from the feature layer to the input.

    Args:
        logits: (N, C) the model's output (its graph reaches ``features``).
        features: the feature layer's output: (N, K, h, w), or any tensor that
            ``to_grid`` maps to (N, K, h, w) (patch tokens; :mod:`clear_native._tokens`).
            The graph below it reaches ``x``.
        x: (N, ch, H, W) the input that requires grad.
        rectify: project ``relu(M_c)`` (True) or the signed ``M_c``.
        to_grid: None, or a callable that only selects, reshapes and permutes
            ``features`` (M, ...) -> (M, K, h, w); applied to the head's gradients too.
    """

    def __init__(self, logits: torch.Tensor, features: torch.Tensor, x: torch.Tensor, rectify: bool,
                 to_grid=None):
        self.logits, self.node, self.x, self.rectify = logits, features, x, rectify
        self.to_grid = to_grid
        self.features = features if to_grid is None else to_grid(features)  # (N, K, h, w)
        self._f = self.features.detach()
        self._y = logits.detach()
        # Set by the back-projection where the signal stays rank one below f
        # (clear_native._rank_one); passes counts the backward passes that took it.
        self.chain = None
        self.rank_one_passes = 0
        self.last_mass: torch.Tensor | None = None  # (B, N) of the last backproject()

    @staticmethod
    def make(f: torch.Tensor | None, logits: torch.Tensor, x: torch.Tensor, rectify: bool, where: str, *,
             named: bool = False, to_grid=None, instead: str = "use signal='logit'") -> "ResponseSignal":
        """From the feature layer ``f`` (found during the forward pass, or None); clear errors
        where there is none. ``instead``: what the messages offer besides ``layer=``."""
        if f is None:
            raise ValueError(
                f"{where}: the class response needs the last spatial feature map (N, K, h, w) of the "
                "model, found as the input of its global pooling or flatten (or of a vision "
                "transformer's last block); none was seen in the forward pass. Name the feature layer "
                f"with layer= (and give reshape= where it outputs tokens), or {instead}")
        if f.shape[0] != logits.shape[0]:
            raise ValueError(f"{where}: the feature map has batch size {f.shape[0]}, the logits "
                             f"{logits.shape[0]}; name the feature layer with layer=")
        if not f.requires_grad:
            raise ValueError(f"{where}: the feature map does not depend differentiably on the images")
        if not logits.requires_grad:
            raise ValueError(f"{where}: the logits do not depend differentiably on the feature layer")
        grid = f if to_grid is None else to_grid(f.detach())
        if grid.dim() != 4 or grid.shape[0] != f.shape[0]:
            hint = "reshape= must return" if to_grid is not None else "the feature layer must output"
            raise ValueError(f"{where}: {hint} an (N, K, h, w) map, got shape {tuple(grid.shape)}"
                             f"{'' if to_grid is not None else '; name a spatial layer with layer='}")
        if _bypasses(logits, f, x):
            msg = (f"{where}: the logits also depend on the images through a path that bypasses the "
                   f"feature layer (shape {tuple(f.shape)}), so the class response there misses part "
                   "of the model's evidence")
            if not named:
                raise ValueError(msg + "; name the feature layer that every path passes with "
                                 f"layer=, or {instead}")
            warnings.warn(msg + " (layer= as named)", stacklevel=4)
        return ResponseSignal(logits, f, x, rectify, to_grid)

    def head_gradient(self, grad_out: torch.Tensor, last: bool) -> torch.Tensor:
        """(B, N, K, h, w): d y_c / d f for the one-hot rows ``grad_out`` (B, N, C), in one
        (batched) backward pass from the logits to the feature layer."""
        batched = grad_out.shape[0] > 1
        (g,) = torch.autograd.grad(self.logits, self.node, grad_out if batched else grad_out[0],
                                   retain_graph=not last, is_grads_batched=batched, allow_unused=True)
        if g is None:
            raise ValueError("the logits do not depend on the feature layer; "
                             "name the feature layer with layer=")
        if not batched:
            g = g.unsqueeze(0)
        if self.to_grid is not None:
            g = self.to_grid(g.flatten(0, 1)).unflatten(0, g.shape[:2])
        return g

    def class_maps(self, g: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        """(B, N, h, w): the per-position contributions M_c (module doc)."""
        contrib = (self._f.unsqueeze(0) * g).sum(2)                      # (B, N, h, w)
        logit = (grad_out * self._y.unsqueeze(0)).sum(2)                  # (B, N): y_c
        h, w = contrib.shape[-2:]
        offset = (logit - contrib.sum((2, 3))) / (h * w)
        return contrib + offset[..., None, None]

    def _parts(self, grad_out: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(g (B, N, K, h, w), relu(M_c) or M_c (B, N, h, w)) for the classes of ``grad_out``."""
        g = self.head_gradient(grad_out, last)
        m = self.class_maps(g, grad_out)
        return g, (m.clamp(min=0) if self.rectify else m)

    def signal(self, grad_out: torch.Tensor, last: bool) -> torch.Tensor:
        """(B, N, K, h, w): ``g_c * relu(M_c)`` (or ``g_c * M_c``) for the classes of ``grad_out``."""
        g, m = self._parts(grad_out, last)
        return g * m.unsqueeze(2)

    def backproject(self, grad_out: torch.Tensor, last: bool) -> torch.Tensor:
        """(B, N, ch, H, W): the input-space maps of the classes of ``grad_out`` (B, N, C)."""
        g, m = self._parts(grad_out, last)
        start, s = self.features, None
        if self.chain is not None and self.rectify:
            a = head_vector(g)
            if a is not None:
                start, s = self.chain.conv_input, collapse(self.chain, a, m)
                self.rank_one_passes += 1
        if s is None:
            s = g * m.unsqueeze(2)
        # The class's rectified evidence sum_ij relu(M_c) (B, N): the scale of its map.
        self.last_mass = m.clamp(min=0).sum((2, 3))
        batched = s.shape[0] > 1
        (grad,) = torch.autograd.grad(start, self.x, s if batched else s[0],
                                      retain_graph=not last, is_grads_batched=batched)
        return grad if batched else grad.unsqueeze(0)


def _bypasses(logits: torch.Tensor, f: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the autograd graph of ``logits`` reaches the input ``x`` (a leaf) without
    passing through ``f``'s node."""
    if f is x or f.grad_fn is None or logits.grad_fn is None:
        return False
    stop = f.grad_fn
    seen, stack = {logits.grad_fn}, [logits.grad_fn]
    while stack:
        node = stack.pop()
        nexts = node.next_functions
        if isinstance(node, _PoolBlock._backward_cls):  # its conv-input edges are shortcuts
            nexts = nexts[2:3]                              # of the edge through the ReLU output
        for nxt, _ in nexts:
            if nxt is None or nxt is stop or nxt in seen:
                continue
            if getattr(nxt, "variable", None) is x:
                return True
            seen.add(nxt)
            stack.append(nxt)
    return False
