"""Clear(method="lrp") against zennit's EpsilonPlusFlat(zero_params="bias") and a slow
per-class LRP written here in plain torch; conservation, class chunks, warnings."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clear_native
from clear_native import Clear
from conftest import needs_cuda
from models import GapNet, make

pytestmark = pytest.mark.usefixtures("one_thread")


# -- zennit and independent references -------------------------------------------------------

def zennit_maps(model, x, canonizers, start, box=None):
    """(N, C, H, W): zennit's EpsilonPlusFlat maps (channel sum), one Gradient call per class;
    ``start(output, c)`` is the relevance put on the model's output for class c; ``box``:
    (low, high) of a ZBox rule at the first layer instead of Flat."""
    zennit = pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.rules import ZBox
    from zennit.types import Linear
    first = [] if box is None else [(Linear, ZBox(*box, zero_params="bias"))]
    composite = EpsilonPlusFlat(zero_params="bias", canonizers=canonizers, first_map=first)
    maps = []
    with Gradient(model, composite) as attributor:
        for c in range(start.classes):
            _, rel = attributor(x, lambda out: start(out, c))
            maps.append(rel.sum(1))
    del zennit
    return torch.stack(maps, 1)


class LogitStart:
    """Relevance one-hot_c * y_c on the logits (standard LRP)."""

    def __init__(self, classes):
        self.classes = classes

    def __call__(self, out, c):
        return out * F.one_hot(torch.full(out.shape[:1], c), out.shape[1]).to(out)


class ResponseStart:
    """Relevance at the feature layer f for class c, computed here from the head:
    R_f = relu(M_c) P / sum_k P, P = relu(f g_c), g_c = dy_c/df, M_c = sum_k f g_c + offset."""

    def __init__(self, head, f):
        self.f = f.detach()
        fr = self.f.clone().requires_grad_(True)
        y = head(fr)
        self.classes, self.starts = y.shape[1], []
        for c in range(self.classes):
            (g,) = torch.autograd.grad(y[:, c].sum(), fr, retain_graph=True)
            contrib = (self.f * g).sum(1)
            m = contrib + ((y[:, c].detach() - contrib.sum((1, 2))) / contrib[0].numel())[:, None, None]
            p = (self.f * g).clamp(min=0)
            total = p.sum(1, keepdim=True)
            safe = torch.where(total > 0, total, torch.ones_like(total))
            self.starts.append(torch.where(total > 0, m.clamp(min=0)[:, None] * p / safe, 0))

    def __call__(self, out, c):
        return self.starts[c]


def close(got, want, rel_atol=1e-5):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=rel_atol * want.abs().max().item())


def mnist(n=8):
    model = clear_native.load_pretrained("mnist")
    return model, clear_native.load_sample("mnist").tensors()[0][:n]


def random_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # BatchNorm that is not the identity
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model, torch.randn(2, 3, 64, 64)


# -- against zennit ----------------------------------------------------------------------------

def test_mnist_logit_matches_zennit():
    pytest.importorskip("zennit")  # it imports torchvision: skips with torch 2.13's CPU build
    from zennit.canonizers import SequentialMergeBatchNorm
    model, x = mnist()
    got = Clear(model, "lrp", signal="logit", input_rule="flat")(x, keep_class_maps=True).class_maps
    close(got, zennit_maps(model, x, [SequentialMergeBatchNorm()], LogitStart(10)))


def test_mnist_response_matches_zennit():
    pytest.importorskip("zennit")
    from zennit.canonizers import SequentialMergeBatchNorm
    model, x = mnist()
    below = nn.Sequential(model.features, model.classifier)   # up to f = the class maps z_L
    start = ResponseStart(lambda f: model.pool(f).flatten(1), below(x))
    got = Clear(model, "lrp", signal="response", input_rule="flat")(x, keep_class_maps=True).class_maps
    close(got, zennit_maps(below, x, [SequentialMergeBatchNorm()], start))


def test_resnet18_logit_matches_zennit():
    pytest.importorskip("zennit")
    from zennit.torchvision import ResNetCanonizer
    model, x = random_resnet18()
    got = Clear(model, "lrp", signal="logit", input_rule="flat")(x, keep_class_maps=True).class_maps
    # zennit's merged BatchNorm stays as x / sqrt(1 + eps) (not exactly the identity): the
    # maps agree to ~5e-5 of their scale
    close(got, zennit_maps(model, x, [ResNetCanonizer()], LogitStart(10)), rel_atol=2e-4)


def test_resnet18_response_matches_zennit():
    pytest.importorskip("zennit")
    from zennit.torchvision import ResNetCanonizer
    model, x = random_resnet18()
    below = nn.Sequential(*list(model.children())[:-2])
    start = ResponseStart(lambda f: model.fc(torch.flatten(model.avgpool(f), 1)), below(x))
    got = Clear(model, "lrp", signal="response", input_rule="flat")(x, keep_class_maps=True).class_maps
    close(got, zennit_maps(below, x, [ResNetCanonizer()], start), rel_atol=2e-4)


@pytest.mark.parametrize("signal", ["logit", "response"])
def test_mnist_zbox_matches_zennit(signal):
    """The default input rule, z^B, with the input domain [0, 1] given and as each image's own
    range (the digits span 0..1 here, so both are the same box)."""
    pytest.importorskip("zennit")
    from zennit.canonizers import SequentialMergeBatchNorm
    model, x = mnist(12)
    x = x[x.amax((1, 2, 3)) == 1]  # digits that span 0..1: their own range is the domain
    if signal == "logit":
        model_z, start = model, LogitStart(10)
    else:
        model_z = nn.Sequential(model.features, model.classifier)
        start = ResponseStart(lambda f: model.pool(f).flatten(1), model_z(x))
    want = zennit_maps(model_z, x, [SequentialMergeBatchNorm()], start, box=(0.0, 1.0))
    close(Clear(model, "lrp", signal=signal, input_bounds=(0, 1))(x, keep_class_maps=True).class_maps, want)
    assert x.shape[0] >= 4 and bool((x.amin((1, 2, 3)) == 0).all())
    close(Clear(model, "lrp", signal=signal)(x, keep_class_maps=True).class_maps, want)


def test_resnet18_zbox_per_channel_and_own_range_match_zennit():
    pytest.importorskip("zennit")
    from zennit.torchvision import ResNetCanonizer
    model, x = random_resnet18()
    # z^B subtracts three convolutions (x W - low W+ - high W-), which magnifies the 1e-5 that
    # zennit's merged BatchNorm keeps (x / sqrt(1 + eps), above) to 1e-3 of a map's maximum
    # at some pixels: with eps = 1e-12 (and float64) the two agree to rounding
    model, x = model.double(), x.double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-12
    mean, std = torch.tensor([0.485, 0.456, 0.406]).double(), torch.tensor([0.229, 0.224, 0.225]).double()
    low, high = (0 - mean) / std, (1 - mean) / std
    x = (0.3 * x).clamp(low.view(1, 3, 1, 1), high.view(1, 3, 1, 1))  # inside the domain, not spanning it
    want = zennit_maps(model, x, [ResNetCanonizer()], LogitStart(10), box=(low.view(1, 3, 1, 1), high.view(1, 3, 1, 1)))
    got = Clear(model, "lrp", signal="logit", input_bounds=(low.tolist(), high.tolist()))(x, keep_class_maps=True)
    close(got.class_maps, want, rel_atol=2e-4)
    own = Clear(model, "lrp", signal="logit")(x, keep_class_maps=True).class_maps  # each image's own range
    for i in range(x.shape[0]):
        box = (x[i:i + 1].amin((2, 3), keepdim=True), x[i:i + 1].amax((2, 3), keepdim=True))
        close(own[i:i + 1], zennit_maps(model, x[i:i + 1], [ResNetCanonizer()], LogitStart(10), box=box), rel_atol=2e-4)
    assert not torch.allclose(own, got.class_maps)  # the two boxes differ


# -- against a per-class loop in plain torch ---------------------------------------------------

def _stab(z):
    return z + 1e-6 * torch.where(z >= 0, 1.0, -1.0)


def _vjp(fn, x, grad):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x), x, grad)
    return g


def slow_lrp_gapnet(model: GapNet, x):
    """Per class: flat conv1, ReLU pass, max-pool gradient, z+ conv2, ReLU pass, norm GAP,
    epsilon fc; relevance one-hot_c * y_c; channel sum. (N, C, H, W)."""
    conv1, _, pool, conv2 = list(model.features)[:4]
    with torch.no_grad():
        a1 = F.relu(conv1(x))
        p1 = pool(a1)
        a2 = F.relu(conv2(p1))
        g = a2.mean((2, 3))
        y = model.fc(g)
    ones = torch.ones_like(x)
    flat = lambda t: F.conv2d(t, torch.ones_like(conv1.weight), None, 1, 1)  # noqa: E731
    zplus = lambda t: F.conv2d(t, conv2.weight.clamp(min=0), None, 1, 1)     # noqa: E731 (p1 >= 0)
    maps = []
    for c in range(y.shape[1]):
        r = y * F.one_hot(torch.full((x.shape[0],), c), y.shape[1])
        r = g * ((r / _stab(g @ model.fc.weight.T)) @ model.fc.weight)          # epsilon
        r = a2 * (r / _stab(g))[..., None, None] / a2[0, 0].numel()             # norm (GAP)
        r = p1 * _vjp(zplus, p1, r / _stab(zplus(p1)))                          # z+
        r = _vjp(pool, a1, r)                                                   # max-pool gradient
        r = _vjp(flat, ones, r / _stab(flat(ones)))                             # flat
        maps.append(r.sum(1))
    return torch.stack(maps, 1)


def test_gapnet_matches_slow_per_class_loop():
    model, x = make("gap", n=3)
    got = Clear(model, "lrp", signal="logit", input_rule="flat")(x, keep_class_maps=True).class_maps
    close(got, slow_lrp_gapnet(model, x))


# -- conservation ------------------------------------------------------------------------------

def test_conservation_mnist():
    """Bias-free z+ / flat / norm rules and max-pool gradients conserve: each class map sums
    to its start mass (logit: y_c, as the norm rule at the GAP passes y_c to f)."""
    model, x = mnist()
    logit = Clear(model, "lrp", signal="logit")(x, keep_class_maps=True)
    torch.testing.assert_close(logit.class_maps.sum((2, 3)), logit.logits, rtol=1e-4, atol=1e-5)
    resp = Clear(model, "lrp", signal="response")(x, keep_class_maps=True)
    with torch.no_grad():
        z = model.class_maps(x)
    mass = (z.clamp(min=0) / z[0, 0].numel()).sum((2, 3))   # sum_ij relu(M_c), M_c = z_L^c / (h w)
    assert (mass > 0).any()
    torch.testing.assert_close(resp.class_maps.sum((2, 3)), mass, rtol=1e-4, atol=1e-6)


def test_conservation_resnet18_response():
    model, x = random_resnet18()
    got = Clear(model, "lrp", signal="response")(x, keep_class_maps=True)
    below = nn.Sequential(*list(model.children())[:-2])
    start = ResponseStart(lambda f: model.fc(torch.flatten(model.avgpool(f), 1)), below(x))
    mass = torch.stack([s.sum((1, 2, 3)) for s in start.starts], 1)
    torch.testing.assert_close(got.class_maps.sum((2, 3)), mass.detach(), rtol=1e-3, atol=1e-6)


# -- chunks, classes, dtypes ---------------------------------------------------------------------

def test_class_chunks_classes_and_image_chunks_agree():
    model, x = mnist(10)
    full = Clear(model, "lrp", class_chunk=1)(x, keep_class_maps=True)
    tol = 1e-6 * full.class_maps.abs().max().item()  # z^B's differences cancel: an atol on the map's scale
    for chunk in (3, 10):
        got = Clear(model, "lrp", class_chunk=chunk)(x, keep_class_maps=True)
        torch.testing.assert_close(got.class_maps, full.class_maps, rtol=1e-5, atol=tol)
        torch.testing.assert_close(got.dominant_class, full.dominant_class)
    chunked = Clear(model, "lrp", image_chunk=3)(x, keep_class_maps=True)
    torch.testing.assert_close(chunked.class_maps, full.class_maps, rtol=1e-5, atol=tol)
    top = Clear(model, "lrp", class_chunk=2)(x, classes=3, keep_class_maps=True)
    want = full.class_maps.gather(1, top.classes[..., None, None].expand(-1, -1, *x.shape[-2:]))
    torch.testing.assert_close(top.class_maps, want, rtol=1e-5, atol=tol)
    one = Clear(model, "lrp")(x, torch.full((10,), 4), classes=[4], keep_class_maps=True)
    torch.testing.assert_close(one.class_maps[:, 0], full.class_maps[:, 4], rtol=1e-5, atol=tol)


def test_float64_and_model_unchanged():
    model, x = make("bn", n=2)
    model = model.double()
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = Clear(model, "lrp", signal="logit")(x.double(), keep_class_maps=True)
    assert got.class_maps.dtype == torch.float64
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_cuda_matches_cpu(device):
    model, x = mnist(4)
    want = Clear(model, "lrp", class_chunk=5)(x, keep_class_maps=True).class_maps
    got = Clear(model.to(device), "lrp", class_chunk=5)(x.to(device), keep_class_maps=True).class_maps
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


# -- warnings and errors -------------------------------------------------------------------------

class GatedNet(GapNet):
    """A squeeze-excitation-like multiplicative gate on the path."""

    def forward(self, x):
        f = self.features(x)
        return self.fc(torch.flatten(self.pool(f * torch.sigmoid(f.mean((2, 3), keepdim=True))), 1))


class InputBNNet(GapNet):
    """A BatchNorm on the image, before any convolution: it cannot be folded."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3).eval()

    def forward(self, x):
        return super().forward(self.norm(x))


def test_uncovered_op_warns_with_its_name_once():
    model = GatedNet().eval()
    ex = Clear(model, "lrp", signal="logit")
    with pytest.warns(UserWarning, match=r"no LRP rule covers .*mul"):
        got = ex(torch.randn(2, 3, 12, 12), keep_class_maps=True)
    assert torch.isfinite(got.class_maps).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex(torch.randn(2, 3, 12, 12))  # once per explainer


def test_unfoldable_batch_norm_warns_with_its_name():
    with pytest.warns(UserWarning, match=r"BatchNorm norm .*cannot be folded"):
        Clear(InputBNNet().eval(), "lrp", signal="logit")(torch.randn(2, 3, 12, 12))


def test_covered_model_does_not_warn():
    model, x = make("bn", n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Clear(model, "lrp")(x)
        Clear(model, "lrp", signal="logit")(x)


def test_options():
    assert "lrp" in clear_native.explain.methods()
    model, _ = make("gap")
    assert Clear(model, "lrp").input_rule == "zb" and Clear(model, "lrp", input_rule="flat").input_rule == "flat"
    with pytest.raises(ValueError, match="input_rule must be one of"):
        Clear(model, "lrp", input_rule="box")
    with pytest.raises(ValueError, match="input_bounds= is the box of input_rule='zb'"):
        Clear(model, "lrp", input_rule="flat", input_bounds=(0, 1))
    with pytest.raises(ValueError, match="input_bounds must be"):
        Clear(model, "lrp", input_bounds=0.5)
    with pytest.raises(ValueError, match="low <= high"):
        Clear(model, "lrp", input_bounds=(1, 0))
    with pytest.raises(ValueError, match="apply to method='lrp'"):
        Clear(model, "guided", input_rule="zb")
    assert Clear(model, "lrp").signal == "logit" and Clear(model, "lrp").channel_reduce == "sum"
    with pytest.raises(ValueError, match="rectified response only"):
        Clear(model, "lrp", rectify=False)
    with pytest.raises(ValueError, match="signal must be one of"):
        Clear(model, "lrp", signal="grad")


def test_batch_runs_give_lrp_the_imagenet_input_domain():
    """``--preprocess imagenet`` fixes the input domain: the batch run's lrp takes it as the z^B box."""
    from clear_native.batch.explainer import _default_explainer, input_domain
    from clear_native.io.preprocess import ImagenetPreprocess
    low, high = input_domain(ImagenetPreprocess())
    torch.testing.assert_close(torch.tensor(low), (0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    torch.testing.assert_close(torch.tensor(high), (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    assert input_domain(None) is None and input_domain(ImagenetPreprocess(normalize=False)) is None
    model, _ = make("gap")
    assert _default_explainer(model, "lrp", input_bounds=(low, high))._lrp.input_bounds is not None
    assert _default_explainer(model, "lrp")._lrp.input_bounds is None  # each image's own range
    assert _default_explainer(model, "cam", input_bounds=(low, high)).method == "cam"
