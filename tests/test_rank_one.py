"""The class response's rank-one chain (clear_native._rank_one): the collapsed first
transposed convolution against the dense one, and Clear's maps with and without it."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import needs_cuda
from models import NUM_CLASSES, make

import clear_native
from clear_native._fusion import RankOneChain
from clear_native._rank_one import collapse, head_vector

pytestmark = pytest.mark.usefixtures("raw_class_scale")  # slow loops: the maps as projected

# (kh, kw, stride, padding, dilation, h, w): the conv's output size is derived.
GEOMETRIES = [
    (3, 3, (1, 1), (1, 1), (1, 1), 7, 7),
    (3, 3, (1, 1), (0, 0), (1, 1), 5, 6),
    (5, 3, (1, 1), (2, 1), (2, 1), 6, 5),
    (1, 1, (1, 1), (0, 0), (1, 1), 4, 3),
    (3, 3, (2, 2), (1, 1), (1, 1), 4, 5),   # stride 2: the transposed-convolution route
    (3, 3, (1, 1), (3, 3), (1, 1), 8, 9),   # padding beyond the kernel's reach
]


def _input_size(kh, kw, stride, padding, dilation, h, w, extra=(0, 0)):
    """An input size whose convolution output is (h, w) (plus a remainder ``extra`` < stride)."""
    return tuple((o - 1) * s - 2 * p + d * (k - 1) + 1 + e
                 for o, s, p, d, k, e in zip((h, w), stride, padding, dilation, (kh, kw), extra))


@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
@pytest.mark.parametrize("steps", ["none", "relu-scale-matrix"])
def test_collapse_equals_dense_transposed_convolution(geo, steps):
    kh, kw, stride, padding, dilation, h, w = geo
    torch.manual_seed(0)
    b, n, k, cin, k_top = 2, 3, 6, 4, 5
    extra = (1, 0) if stride == (2, 2) else (0, 0)
    size = _input_size(*geo, extra=extra)
    weight = torch.randn(k, cin, kh, kw, dtype=torch.float64)
    u = torch.zeros(n, cin, *size, dtype=torch.float64)
    assert F.conv2d(u, weight, None, stride, padding, dilation).shape[-2:] == (h, w)
    m = torch.randn(b, n, h, w, dtype=torch.float64).clamp(min=0)
    if steps == "none":
        chain_steps, a = (), torch.randn(b, k, dtype=torch.float64)
        dense_a = a
    else:  # relu, batch-norm scale, 1x1 conv (K_top -> K), as the deconvnet pass applies them
        scale, matrix = torch.rand(k_top, dtype=torch.float64) + 0.5, torch.randn(k_top, k, dtype=torch.float64)
        chain_steps = (("relu", None), ("scale", scale), ("matrix", matrix))
        a = torch.randn(b, k_top, dtype=torch.float64)
        dense_a = None
    chain = RankOneChain(chain_steps, weight, stride, padding, dilation, u)
    got = collapse(chain, a, m)
    assert got.shape == (b, n, cin, *size)
    for i in range(b):
        s = a[i][None, :, None, None] * m[i][:, None]                   # (N, K_top or K, h, w)
        if dense_a is None:
            s = torch.einsum("nkhw,kj->njhw", s.clamp(min=0) * scale[:, None, None], matrix)
        out_pad = tuple(sz - ((o - 1) * st - 2 * p + d * (kk - 1) + 1)
                        for sz, o, st, p, d, kk in zip(size, (h, w), stride, padding, dilation, (kh, kw)))
        want = F.conv_transpose2d(s, weight, None, stride, padding, out_pad, 1, dilation)
        torch.testing.assert_close(got[i], want)


def test_head_vector_only_where_the_same_everywhere():
    g = torch.randn(2, 1, 4, 1, 1).expand(2, 3, 4, 5, 5).clone()
    torch.testing.assert_close(head_vector(g), g[:, 0, :, 0, 0])
    g[1, 2, 0, 4, 4] += 1e-3
    assert head_vector(g) is None
    assert head_vector(torch.zeros(1, 0, 4, 5, 5)) is None


class PaperNet(nn.Module):
    """The paper's ALL-CNN head: conv -> ReLU -> 1x1 class conv -> ReLU -> GAP."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, c, 1), nn.ReLU())

    def forward(self, x):
        return self.features(x).mean((2, 3))


class StridedNet(nn.Module):
    """A strided, then a dilated last conv; GAP + linear head (in-place ReLUs)."""

    def __init__(self, c=NUM_CLASSES, stride=2, dilation=1):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, stride=stride, padding=dilation, dilation=dilation)
        self.fc = nn.Linear(8, c)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x), inplace=True), 2)
        return self.fc(F.relu(self.c2(x), inplace=True).mean((2, 3)))


def _models():
    yield "gap (GAP + linear)", *make("gap", n=3, size=13)
    yield "bn (in-place ReLU)", *make("bn", n=3, size=12)
    yield "convgap 1x1 class conv", *make("convgap1x1", n=3, size=12)
    yield "convgap 3x3 class conv", *make("convgap3x3", n=3, size=12)
    torch.manual_seed(1)
    x = torch.randn(3, 3, 12, 12)
    yield "paper (ReLU after the class conv)", PaperNet().eval(), x
    yield "strided last conv", StridedNet().eval(), torch.randn(3, 3, 14, 14)
    yield "dilated last conv", StridedNet(stride=1, dilation=2).eval(), x


@pytest.mark.parametrize("class_chunk", [1, 3], ids=["one class per pass (fused blocks)", "batched passes"])
@pytest.mark.parametrize("name, model, x", list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_clear_maps_equal_the_dense_pass(name, model, x, class_chunk):
    """Where the chain is found, every class-response pass starts below it, and the maps
    equal torch's own backward pass from the feature layer (fuse=False)."""
    fast = clear_native.Clear(model, "deconvnet", class_chunk=class_chunk)
    got = fast(x, keep_class_maps=True)
    assert fast.last_routes.rank_one_passes == len(fast.last_routes.passes) > 0, name
    want = clear_native.Clear(model, "deconvnet", fuse=False)(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, want.class_maps, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.dominant_class, want.dominant_class)


@pytest.mark.parametrize("kwargs", [{"method": "guided"}, {"method": "gradient"},
                                    {"method": "deconvnet", "rectify": False},
                                    {"method": "deconvnet", "signal": "logit"},
                                    {"method": "deconvnet", "fuse": False}], ids=str)
def test_not_taken_where_the_signal_is_not_rank_one(kwargs):
    """The guided / gradient rules mask by the forward activations, a signed class map
    does not pass the ReLU rule as a factor, the logit signal has no class map."""
    model, x = make("gap", n=3, size=12)
    explainer = clear_native.Clear(model, class_chunk=1, **kwargs)
    explainer(x)
    assert explainer.last_routes.rank_one_passes == 0


def test_not_taken_where_the_head_gradient_varies():
    """Flatten + linear: the head's gradient differs by position (and a max-pool output
    is the feature layer): the dense pass runs, same maps as fuse=False."""
    model, x = make("flatten", n=3, size=12)
    explainer = clear_native.Clear(model, "deconvnet", class_chunk=1)
    got = explainer(x, keep_class_maps=True)
    assert explainer.last_routes.rank_one_passes == 0
    want = clear_native.Clear(model, "deconvnet", fuse=False)(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, want.class_maps)


class SpatialHeadNet(nn.Module):
    """conv -> ReLU as the feature layer, then a head whose gradient varies by position."""

    def __init__(self, c=NUM_CLASSES):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, c)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


def test_chain_found_but_signal_not_rank_one():
    """The chain exists (conv -> ReLU is the feature layer) but the head's gradient is
    not one vector: each pass checks and takes the dense route."""
    torch.manual_seed(0)
    model, x = SpatialHeadNet().eval(), torch.randn(3, 3, 6, 6)
    explainer = clear_native.Clear(model, "deconvnet", layer="conv", class_chunk=1)
    got = explainer(x, keep_class_maps=True)
    assert explainer.last_routes.rank_one_passes == 0
    want = clear_native.Clear(model, "deconvnet", layer="conv", fuse=False)(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, want.class_maps)


@needs_cuda
def test_cuda_batched_passes_take_it_and_match_cpu():
    """On CUDA (batched passes, no fused blocks) the rank-one start runs too: same maps as
    the CPU explainer's."""
    model, x = make("convgap1x1", n=4, size=12)
    cpu = clear_native.Clear(model, "deconvnet")(x, keep_class_maps=True)
    explainer = clear_native.Clear(model.cuda(), "deconvnet")
    got = explainer(x.cuda(), keep_class_maps=True)
    assert explainer.last_routes.rank_one_passes == len(explainer.last_routes.passes) > 0
    torch.testing.assert_close(got.class_maps.cpu(), cpu.class_maps, rtol=1e-4, atol=1e-6)
