"""The class response's first transposed convolution, collapsed to one input channel.

At the feature layer ``f`` the class response signal is ``g_c * relu(M_c)``
(:mod:`clear_native._response`). Where the head's gradient ``g_c`` is one vector
``a_c`` (K,) at every image and position -- a C-kernel class convolution + global
average pooling (``e_c / (h w)``), or global average pooling + a linear layer
(``W[c] / (h w)``) -- the signal is rank one: ``a_c (x) m_c`` with ``m_c >= 0`` (N, h, w).
Going down the layers that produced ``f`` it stays rank one as long as only the
vector changes:

* the deconvnet rule of a ReLU: ``relu(a m) = relu(a) m`` because ``m >= 0``;
* an eval batch norm: ``a * scale``;
* a 1x1 convolution (stride 1, no padding): ``W^T a``;

and at the first other convolution ``W`` (C, C_in, kh, kw) its transposed convolution
of ``a (x) m`` is that of ``m`` alone (one input channel) with the kernel
``sum_c a_c W[c]`` (C_in, kh, kw): C times fewer operations than the dense one. The
ALL-CNN of the paper (``conv -> ReLU -> 1x1 class conv -> GAP``) and VGG-style
``conv -> ReLU -> GAP -> linear`` heads have such a chain; :meth:`clear_native._fusion.
fused_relu_rule.rank_one_chain` finds it in the forward pass. The maps equal the dense
pass up to float rounding (tests/test_rank_one.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clear_native._fusion import RankOneChain


def head_vector(g: torch.Tensor) -> torch.Tensor | None:
    """(B, K): the head's gradient ``g`` (B, N, K, h, w) where it is the same at every
    image and position (exactly), else None."""
    if g.shape[1] == 0 or g.shape[3] == 0 or g.shape[4] == 0:
        return None
    a = g[:, 0, :, 0, 0]
    return a if torch.equal(g, a[:, None, :, None, None].expand_as(g)) else None


def collapse(chain: RankOneChain, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(B, N, C_in, H, W): the signal at the chain's convolution input for the rank-one
    signals ``a[b] (x) m[b]`` at the feature layer (``a`` (B, K), ``m`` (B, N, h, w) >= 0)."""
    for kind, value in chain.steps:
        if kind == "relu":
            a = a.clamp(min=0)
        elif kind == "scale":
            a = a * value
        else:
            a = a @ value
    b, n, h, w = m.shape
    kernel = torch.einsum("bc,cikl->bikl", a, chain.weight)  # (B, C_in, kh, kw)
    cin, kh, kw = kernel.shape[1:]
    height, width = chain.conv_input.shape[-2:]
    (dh, dw), (ph, pw) = chain.dilation, chain.padding
    # Stride 1: the transposed convolution of one channel is a correlation with the
    # flipped kernel: one small GEMM per image over the map's kh kw shifted copies
    # (oneDNN's transposed convolution with one input channel, and F.unfold, are
    # several times slower at 7x7).
    ph2, pw2 = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    if chain.stride == (1, 1) and ph2 >= 0 and pw2 >= 0:
        padded = F.pad(m, (pw2, pw2, ph2, ph2))
        cols = torch.stack([padded[..., ky * dh:ky * dh + height, kx * dw:kx * dw + width]
                            for ky in range(kh) for kx in range(kw)], 2)  # (B, N, taps, H, W)
        out = torch.matmul(kernel.flip(-2, -1).reshape(b, 1, cin, kh * kw),
                           cols.view(b, n, kh * kw, height * width))
        return out.view(b, n, cin, height, width)
    pad = [size - ((low - 1) * s - 2 * p + d * (k - 1) + 1) for size, low, s, p, d, k in
           zip((height, width), (h, w), chain.stride, chain.padding, chain.dilation, (kh, kw))]
    out = F.conv_transpose2d(m.transpose(0, 1), kernel, stride=chain.stride, padding=chain.padding,
                             output_padding=tuple(pad), groups=b, dilation=chain.dilation)
    return out.view(n, b, cin, height, width).transpose(0, 1)
