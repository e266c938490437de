"""clear_native.Clear against slow, independently written per-class loops."""
import gc
import tracemalloc
from dataclasses import fields
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clear_native
from clear_native import explain as explain_mod
from clear_native._cam import Upsampled, cam_source
from clear_native import reference
from conftest import DEVICES
from models import (NUM_CLASSES, ChannelsLastNet, FlattenNet, GapNet, LayerNormHead, MLPNet,
                    Relu6Net, TanhAfterPool, TinyViT, make)
from reference_rules import HookedReLU

pytestmark = pytest.mark.usefixtures("one_thread", "raw_class_scale")

FIELDS = ["dominant_class", "dominant_response", "runner_up_class", "runner_up_response",
          "weakest_class", "weakest_response", "target_response", "rival_class", "rival_response"]
BACKPROP = ["deconvnet", "guided", "gradient"]


CAM_MODELS = ["gap", "convgap1x1", "convgap3x3", "bn", "functional", "shared"]


# -- independent slow references -----------------------------------------------------------

def slow_maps(model, images, method, reduce="sum"):
    """One forward and one backward per class; ReLU rules from tensor hooks (HookedReLU)."""
    with HookedReLU(method), torch.enable_grad():
        out = []
        c = model(images).shape[1]
        for k in range(c):
            x = images.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(x)[:, k].sum(), x)
            if reduce == "sum":
                out.append(g.sum(1))
            elif reduce == "max_abs":
                out.append(g.abs().amax(1))
            else:
                out.append(g.pow(2).sum(1).sqrt())
    return torch.stack(out, 1)


# How each test model splits into the feature layer f and the head (written out by hand).
SPLITS = {
    "gap": (lambda m, x: m.features(x), lambda m, f: m.fc(torch.flatten(m.pool(f), 1))),
    "bn": (lambda m, x: m.features(x), lambda m, f: m.fc(torch.flatten(m.pool(f), 1))),
    "convgap1x1": (lambda m, x: m.features(x), lambda m, f: m.pool(f).flatten(1)),
    "convgap3x3": (lambda m, x: m.features(x), lambda m, f: m.pool(f).flatten(1)),
    "flatten": (lambda m, x: m.pool(m.act(m.conv(x))), lambda m, f: m.fc(f.flatten(1))),
    "mlp": (lambda m, x: m.features(x), lambda m, f: m.head(f)),
    "shared": (lambda m, x: m.act(m.c3(m.act(m.c2(m.mp(m.act(m.c1(x))))))),
               lambda m, f: m.fc(m.pool(f).flatten(1))),
    "functional": (lambda m, x: torch.relu_(m.c4(torch.relu(m.c3(F.max_pool2d(F.relu(
        m.c2(F.relu(m.c1(x)))), 2)))).relu() - 0.1), lambda m, f: m.fc(m.pool(f).flatten(1))),
}


def slow_response_maps(model, images, method, split, reduce="sum", rectify=True):
    """The response signal, class by class: the head's plain gradient g_c = dy_c/df, the
    class map M_c = sum_k f g_c + (y_c - sum f g_c) / (h w), then g_c * relu(M_c) sent
    from f down to the input with the rule (HookedReLU). ``split``: a model name of SPLITS,
    or a (features, head) pair as there."""
    features, head = SPLITS[split] if isinstance(split, str) else split
    with torch.enable_grad():
        f0 = features(model, images).detach()
        c = model(images).shape[1]
        signals = []
        for k in range(c):
            fr = f0.clone().requires_grad_(True)
            y = head(model, fr)[:, k]
            (g,) = torch.autograd.grad(y.sum(), fr)
            contrib = (f0 * g).sum(1)
            m = contrib + ((y.detach() - contrib.sum((1, 2))) / contrib[0].numel()).view(-1, 1, 1)
            signals.append(g * (m.clamp(min=0) if rectify else m).unsqueeze(1))
    out = []
    with HookedReLU(method), torch.enable_grad():
        for s in signals:
            x = images.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(features(model, x), x, s)
            out.append(g.sum(1) if reduce == "sum" else g.abs().amax(1) if reduce == "max_abs"
                       else g.pow(2).sum(1).sqrt())
    return torch.stack(out, 1)


def slow_maps_module_hooks(model, images, method):
    """Same, with full backward hooks on the nn.ReLU modules (module models only)."""
    def hook(module, grad_input, grad_output):
        if method == "deconvnet":
            return (grad_output[0].clamp(min=0),)
        return (grad_input[0].clamp(min=0),)  # guided: masked gradient, rectified

    handles = [m.register_full_backward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        out = []
        for k in range(model(images).shape[1]):
            x = images.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(x)[:, k].sum(), x)
            out.append(g.sum(1))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out, 1)


def cam_maps(model, images):
    """Upsampled class maps W . F + b from explicit hooks."""
    rec = {}
    h = model.pool.register_forward_hook(lambda m, i, o: rec.update(feats=i[0]))
    with torch.no_grad():
        model(images)
    h.remove()
    feats = rec["feats"]
    if hasattr(model, "fc"):
        maps = reference.class_maps(feats, model.fc.weight, model.fc.bias)
    else:  # C-kernel last conv: its output are the class maps
        maps = feats
    return F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)


def slow_cam_maps(model, images, split, to_grid=None):
    """cam for any head, class by class: with g_c = dy_c/df (one backward per class), the
    contribution h w sum_k f g_c + (y_c - sum f g_c) on the grid of f (its spatial mean
    is y_c), upsampled. ``split`` = (features, head) as in SPLITS; ``to_grid`` maps f to
    (N, K, h, w) where it is not one (tokens, channels-last)."""
    features, head = split
    grid = to_grid or (lambda t: t)
    with torch.enable_grad():
        f0 = features(model, images).detach()
        out = []
        for k in range(model(images).shape[1]):
            fr = f0.clone().requires_grad_(True)
            y = head(model, fr)[:, k]
            (g,) = torch.autograd.grad(y.sum(), fr)
            contrib = (grid(f0) * grid(g)).sum(1)  # (N, h, w)
            hw = contrib[0].numel()
            out.append(hw * contrib + (y.detach() - contrib.sum((1, 2))).view(-1, 1, 1))
    maps = torch.stack(out, 1)
    return F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)


def assert_dominance(got, maps, target):
    want = reference.dominance(maps, target)
    for name in FIELDS:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0,
                                   equal_nan=True, msg=name)


# -- tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_name", ["gap", "convgap1x1", "convgap3x3", "flatten", "bn",
                                        "functional", "shared"])
@pytest.mark.parametrize("method", BACKPROP)
def test_backprop_matches_slow_loop(method, model_name, device):
    model, x = make(model_name, device)
    got = clear_native.Clear(model, method, signal="logit", channel_reduce="sum")(x, keep_class_maps=True)
    want = slow_maps(model, x, method)
    assert got.class_maps.shape == (2, NUM_CLASSES, 12, 12)
    torch.testing.assert_close(got.class_maps, want)
    assert_dominance(got, got.class_maps, got.prediction)
    torch.testing.assert_close(got.prediction, model(x).argmax(1))
    torch.testing.assert_close(got.target, got.prediction)
    torch.testing.assert_close(got.logits, model(x).detach())
    assert got.method == method and got.classes is None and got.signal == "logit"


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
@pytest.mark.parametrize("model_name", ["gap", "shared"])
def test_backprop_matches_module_hooks(method, model_name):
    model, x = make(model_name)
    got = clear_native.Clear(model, method, signal="logit", channel_reduce="sum")(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, slow_maps_module_hooks(model, x, method))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_name", list(SPLITS))
@pytest.mark.parametrize("method", BACKPROP)
def test_response_matches_slow_loop(method, model_name, device):
    """The default signal (class response) on every head type: C-kernel conv + GAP (the
    paper), GAP + linear, flatten + linear, flatten + MLP, functional; batched (class
    chunks, torch's nodes) and one class per pass (fused blocks on CPU)."""
    model, x = make(model_name, device, n=3)
    reduce = explain_mod.DEFAULT_CHANNEL_REDUCE[method]
    want = slow_response_maps(model, x, method, model_name, reduce)
    for chunk in (None, 1):
        got = clear_native.Clear(model, method, class_chunk=chunk)(x, keep_class_maps=True)
        assert got.signal == "response"
        torch.testing.assert_close(got.class_maps, want)
        assert_dominance(got, got.class_maps, got.prediction)
    got = clear_native.Clear(model, method, rectify=False, channel_reduce="sum")(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, slow_response_maps(model, x, method, model_name, rectify=False))


def test_default_channel_reduce():
    model, x = make("gap")
    for method, reduce in explain_mod.DEFAULT_CHANNEL_REDUCE.items():
        assert clear_native.Clear(model, method).channel_reduce == reduce
        want = clear_native.Clear(model, method, channel_reduce=reduce)(x, keep_class_maps=True)
        got = clear_native.Clear(model, method)(x, keep_class_maps=True)
        torch.testing.assert_close(got.class_maps, want.class_maps)
    assert clear_native.Clear(model, "deconvnet").channel_reduce == "max_abs"


def test_response_reduces_to_the_paper():
    """C-kernel last conv + GAP: class c's map is relu(z_L^c) sent through kernel c's
    transposed convolution and down the deconvnet (scaled by 1 / (h w)^2); GAP + linear:
    the class map is (W[c] . f(i, j) + b[c]) / (h w); flatten + linear: W[c] . f(i, j) + b[c] / (h w)."""
    from clear_native._response import ResponseSignal

    model, x = make("convgap1x1", n=2)
    got = clear_native.Clear(model, "deconvnet", channel_reduce="sum")(x, keep_class_maps=True).class_maps
    with HookedReLU("deconvnet"):
        xr = x.clone().requires_grad_(True)
        z = model.features(xr)  # (N, C, 6, 6): the class maps z_L
        hw = z.shape[2] * z.shape[3]
        for c in range(NUM_CLASSES):
            signal = torch.zeros_like(z)
            signal[:, c] = z[:, c].detach().clamp(min=0)
            (g,) = torch.autograd.grad(z, xr, signal, retain_graph=True)
            torch.testing.assert_close(got[:, c] * hw * hw, g.sum(1), rtol=1e-4, atol=1e-5)

    for name in ("gap", "flatten"):
        model, x = make(name, n=2)
        features, head = SPLITS[name]
        f = features(model, x).detach().requires_grad_(True)
        y = head(model, f)
        src = ResponseSignal(y, f, x, True)
        grad_out = torch.eye(NUM_CLASSES)[:, None, :].expand(-1, 2, -1).contiguous()  # (C, N, C)
        maps = src.class_maps(src.head_gradient(grad_out, last=False), grad_out)
        hw = f.shape[2] * f.shape[3]
        w, b = model.fc.weight.detach(), model.fc.bias.detach()
        if name == "gap":
            want = (torch.einsum("ck,nkhw->cnhw", w, f.detach()) + b.view(-1, 1, 1, 1)) / hw
        else:
            want = (torch.einsum("ckhw,nkhw->cnhw", w.view(NUM_CLASSES, *f.shape[1:]), f.detach())
                    + b.view(-1, 1, 1, 1) / hw)
        torch.testing.assert_close(maps, want)
        torch.testing.assert_close(maps.sum((2, 3)), y.detach().t())  # contributions sum to the logit


def test_response_feature_layer_and_errors():
    # a named layer gives the same maps as the one found automatically
    model, x = make("gap")
    auto = clear_native.Clear(model, "deconvnet")(x, keep_class_maps=True)
    named = clear_native.Clear(model, "deconvnet", layer="features.4")(x, keep_class_maps=True)
    torch.testing.assert_close(named.class_maps, auto.class_maps)
    # an earlier layer: its maps follow the formula at that layer (plain gradient above it)
    early = clear_native.Clear(model, "guided", layer="features.2")(x, keep_class_maps=True)
    split = (lambda m, t: m.features[:3](t), lambda m, f: m.fc(torch.flatten(m.pool(m.features[3:](f)), 1)))
    torch.testing.assert_close(early.class_maps, slow_response_maps(model, x, "guided", split))
    # two spatial branches into the head: no single feature layer, a clear error (or a
    # warning where the user named the layer)
    bypass, xb = make("bypass")
    with pytest.raises(ValueError, match="bypasses the feature layer.*layer=.*signal='logit'"):
        clear_native.Clear(bypass, "deconvnet")(xb)
    with pytest.warns(UserWarning, match="bypasses the feature layer"):
        clear_native.Clear(bypass, "deconvnet", layer="c2")(xb)
    clear_native.Clear(bypass, "deconvnet", signal="logit")(xb)

    class NoPooling(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)

        def forward(self, t):
            return torch.logsumexp(self.conv(t), dim=(2, 3))

    with pytest.raises(ValueError, match="needs the last spatial feature map.*layer=.*signal='logit'"):
        clear_native.Clear(NoPooling().eval(), "gradient")(x)
    with pytest.raises(ValueError, match="signal must be one of"):
        clear_native.Clear(model, "deconvnet", signal="gradient")
    with pytest.raises(ValueError, match="signal= applies to the back-projection methods"):
        clear_native.Clear(model, "cam", signal="response")
    with pytest.raises(ValueError, match="layer= names the feature layer"):
        clear_native.Clear(model, "deconvnet", signal="logit", layer="features.4")
    with pytest.raises(TypeError, match="rectify must be a bool"):
        clear_native.Clear(model, "deconvnet", rectify="yes")


def test_response_head_relus_take_the_plain_gradient():
    """The MLP head's ReLU is above the feature layer: its backward is the plain gradient
    whatever the rule (deconvnet would rectify it), so M_c is the true contribution."""
    model, x = make("mlp", n=2)
    got = clear_native.Clear(model, "deconvnet", channel_reduce="sum")(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, slow_response_maps(model, x, "deconvnet", "mlp"))
    # the feature-layer ReLU (below f) does take the rule: differs from plain gradients
    grad = clear_native.Clear(model, "gradient")(x, keep_class_maps=True)
    assert not torch.allclose(got.class_maps, grad.class_maps)


def _relu6_slow_maps(model, x, method):
    """Per class, through tensor hooks: deconvnet rectifies the backward signal at every
    clipped ReLU, guided also masks it by 0 < input < t, gradient masks only."""
    def hooked(t, upper):
        y = t.clamp(0, upper)
        if method == "gradient":
            return y
        y = t + (y - t).detach() if method == "deconvnet" else y
        y.register_hook(lambda g: g.clamp(min=0))
        return y

    def forward(t):
        y = F.max_pool2d(hooked(3 * model.c1(t), 6.0), 2)
        y = hooked(3 * model.c2(y), 2.0)
        y = hooked(4 * model.c3(y), 6.0)
        return model.fc(y.mean((2, 3)))

    out = []
    for k in range(NUM_CLASSES):
        xr = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(forward(xr)[:, k].sum(), xr)
        out.append(g.sum(1))
    return torch.stack(out, 1)


@pytest.mark.parametrize("chunk", [None, 1])
@pytest.mark.parametrize("method", BACKPROP)
def test_relu6_rules(method, chunk):
    torch.manual_seed(0)
    model, x = Relu6Net().eval(), torch.randn(3, 3, 12, 12)
    got = clear_native.Clear(model, method, signal="logit", channel_reduce="sum", class_chunk=chunk)(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, _relu6_slow_maps(model, x, method))
    clipped = (3 * model.c1(x) > 6).any() and (3 * model.c2(F.max_pool2d(model.act(3 * model.c1(x)), 2)) > 2).any()
    assert bool(clipped)  # the clip is exercised


def test_rule_that_finds_no_activation_warns_once():
    class TanhNet(GapNet):
        def forward(self, x):
            return self.fc(torch.tanh(self.features[3](F.max_pool2d(torch.tanh(self.features[0](x)), 2))).mean((2, 3)))

    model, x = TanhNet().eval(), torch.randn(2, 3, 12, 12)
    explainer = clear_native.Clear(model, "deconvnet")
    with pytest.warns(UserWarning, match=r"no activation that the rule covers.*plain\s+gradients"):
        explainer(x)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer(x)  # once per explainer
        clear_native.Clear(model, "gradient")(x)  # nothing to warn about


class NoPoolNet(nn.Module):
    """conv/ReLU/conv/ReLU, GAP + linear: no max-pool anywhere."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


@pytest.mark.parametrize("signal", ["response", "logit"])
def test_deconvnet_without_switches_warns_once_that_its_detail_is_fixed(signal):
    import warnings
    model, x = NoPoolNet().eval(), torch.randn(3, 3, 10, 10)
    explainer = clear_native.Clear(model, "deconvnet", signal=signal)
    with pytest.warns(UserWarning, match=r"no max-pool switch.*same for every image"):
        maps = explainer(x, keep_class_maps=True).class_maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer(x)  # once per explainer
        clear_native.Clear(GapNet().eval(), "deconvnet", signal=signal)(x)  # switches: no warning
        clear_native.Clear(model, "guided", signal=signal)(x)               # reads the activations
    other = explainer(torch.randn(3, 3, 10, 10), keep_class_maps=True).class_maps
    if signal == "logit":  # what the warning says: the maps do not depend on the image at all
        torch.testing.assert_close(other, maps.expand_as(other))
        torch.testing.assert_close(maps, maps[:1].expand_as(maps))


def test_deconvnet_rule_differs_from_gradient():
    model, x = make("gap")
    maps = {m: clear_native.Clear(model, m)(x, keep_class_maps=True).class_maps for m in BACKPROP}
    assert not torch.allclose(maps["deconvnet"], maps["gradient"])
    assert not torch.allclose(maps["guided"], maps["deconvnet"])


@pytest.mark.parametrize("reduce", ["sum", "max_abs", "l2"])
def test_channel_reduce(reduce):
    model, x = make("functional")
    got = clear_native.Clear(model, "guided", signal="logit", channel_reduce=reduce)(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, slow_maps(model, x, "guided", reduce))
    resp = clear_native.Clear(model, "guided", channel_reduce=reduce)(x, keep_class_maps=True)
    torch.testing.assert_close(resp.class_maps, slow_response_maps(model, x, "guided", "functional", reduce))
    if reduce != "sum":
        assert bool((got.class_maps >= 0).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_name", CAM_MODELS)
def test_cam_matches_upsampled_class_maps(model_name, device):
    model, x = make(model_name, device)
    explainer = clear_native.Clear(model, "cam")
    got = explainer(x, keep_class_maps=True)
    want = cam_maps(model, x)
    torch.testing.assert_close(got.class_maps, want)
    assert_dominance(got, got.class_maps, got.prediction)
    fast = explainer(x)  # the fused project_dominance path (or the streamed conv path)
    torch.testing.assert_close(fast.dominant_response, got.dominant_response)
    torch.testing.assert_close(fast.target_response, got.target_response)
    assert (fast.dominant_class != got.dominant_class).float().mean() < 1e-3


@pytest.mark.parametrize("method", ["deconvnet", "cam"])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_equals_unchunked(method, chunk):
    model, x = make("gap")
    whole = clear_native.Clear(model, method, class_chunk=NUM_CLASSES)(x, keep_class_maps=True)
    parts = clear_native.Clear(model, method)(x, keep_class_maps=True, class_chunk=chunk)
    torch.testing.assert_close(parts.class_maps, whole.class_maps)
    assert_dominance(parts, parts.class_maps, parts.target)
    nokeep = clear_native.Clear(model, method, class_chunk=chunk)(x)
    torch.testing.assert_close(nokeep.dominant_response, whole.dominant_response)


FUSED_ROUTES = {"gap": [True], "convgap1x1": [True], "bn": [True], "functional": [True],
                "shared": [True], "flatten": [True], "secondusenet": [False, True], "bypass": [True],
                "below": [True, True], "below_used_twice": [True, True]}
# deconvnet: blocks whose ReLU below applies its rule in the fused pass (rectify route).
RECTIFIED = {"functional": [True], "below": [True, True], "below_used_twice": [False, True]}
# deconvnet: whether the top layers' signal comes from one image (TopShortcut).
TOP_SHORTCUT = {"gap": True, "convgap1x1": True, "bn": True, "functional": True,
                "shared": True, "flatten": True, "secondusenet": True, "bypass": False,
                "below": True, "below_used_twice": False}


@pytest.mark.parametrize("model_name", list(FUSED_ROUTES))
@pytest.mark.parametrize("method", BACKPROP)
def test_fused_blocks_match_slow_loop_and_plain_autograd(method, model_name):
    """One class per pass (CPU): conv -> [BN] -> ReLU -> max-pool blocks take the fused
    route where only the pool uses the ReLU output, the plain one elsewhere (overlapping
    pools are not fused at all); deconvnet takes the top layers' signal from one image
    where they ignore the image; the maps equal the slow loop and torch's own nodes."""
    model, x = make(model_name, n=3)
    explainer = clear_native.Clear(model, method, signal="logit", channel_reduce="sum", class_chunk=1)
    fused = explainer(x, keep_class_maps=True)
    routes = explainer.last_routes
    assert routes.top_shortcut == (method == "deconvnet" and TOP_SHORTCUT[model_name])
    assert routes.fast == FUSED_ROUTES[model_name]
    rectified = RECTIFIED.get(model_name, [False] * len(FUSED_ROUTES[model_name]))
    assert routes.rectified == (rectified if method == "deconvnet" else [False] * len(rectified))
    assert routes.passes == [1] * NUM_CLASSES
    torch.testing.assert_close(fused.class_maps, slow_maps(model, x, method))
    unfused = clear_native.Clear(model, method, signal="logit", channel_reduce="sum", class_chunk=1, fuse=False)
    plain = unfused(x, keep_class_maps=True)
    assert unfused.last_routes.fast == [] and not unfused.last_routes.top_shortcut  # no fused pass
    torch.testing.assert_close(fused.class_maps, plain.class_maps)
    assert_dominance(fused, fused.class_maps, fused.prediction)


@pytest.mark.parametrize("model_name", ["secondusenet", "below", "below_used_twice", "gap", "flatten"])
@pytest.mark.parametrize("method", BACKPROP)
def test_fused_blocks_response_signal(method, model_name):
    """Response signal, one class per pass: the routes are chosen from the graph below the
    feature layer (same as from the logits here), no one-image top, same maps as torch's
    own nodes and as the batched pass."""
    model, x = make(model_name, n=3)
    explainer = clear_native.Clear(model, method, class_chunk=1)
    fused = explainer(x, keep_class_maps=True)
    # SecondUseNet's last max-pool is its global pooling: its input is the feature layer;
    # BelowNet(second_use=True) pools its first ReLU output last: that is the feature layer,
    # both blocks lie above it (head) and take the plain route
    special = {"secondusenet": [False, False], "below_used_twice": [False, False]}
    assert explainer.last_routes.fast == special.get(model_name, FUSED_ROUTES[model_name])
    assert not explainer.last_routes.top_shortcut
    batched = clear_native.Clear(model, method, class_chunk=NUM_CLASSES)(x, keep_class_maps=True)
    torch.testing.assert_close(fused.class_maps, batched.class_maps)
    unfused = clear_native.Clear(model, method, class_chunk=1, fuse=False)
    plain = unfused(x, keep_class_maps=True)
    assert unfused.last_routes.fast == []
    torch.testing.assert_close(fused.class_maps, plain.class_maps)
    assert_dominance(fused, fused.class_maps, fused.prediction)


def test_fused_state_is_released_on_errors():
    """An exception between the forward pass and the last backward pass still releases the
    fused sites' tensors (the Backprojector's with block)."""
    import weakref

    from clear_native._backproject import Backprojector

    model, x = make("below", n=3)
    model.requires_grad_(False)  # as Clear does: the fused blocks need frozen weights
    x = x.requires_grad_(True)
    with pytest.raises(RuntimeError, match="stop"):
        with Backprojector("deconvnet", fuse=True) as bp, bp.mode:
            logits = model(x)
            bp.choose_routes(logits)
            bp.use_top_shortcut(model, x, logits)
            assert bp.any_fused and bp.top is not None
            kept = weakref.ref(bp.mode.sites[0].indices)
            raise RuntimeError("stop")
    assert bp.top is None and all(s.indices is None and s.conv_input is None for s in bp.mode.sites)
    del logits
    assert kept() is None


def test_fused_blocks_float64_and_model_unchanged():
    model, x = make("bn", n=3)
    model = model.double()
    before = snapshot(model)
    got = clear_native.Clear(model, "deconvnet", signal="logit", channel_reduce="sum", class_chunk=1)(x.double(), keep_class_maps=True)
    assert got.class_maps.dtype == torch.float64
    torch.testing.assert_close(got.class_maps, slow_maps(model, x.double(), "deconvnet"))
    got = clear_native.Clear(model, "deconvnet", channel_reduce="sum", class_chunk=1)(x.double(), keep_class_maps=True)
    assert got.class_maps.dtype == torch.float64
    torch.testing.assert_close(got.class_maps, slow_response_maps(model, x.double(), "deconvnet", "bn"))
    assert_unchanged(model, before)


def test_first_image_chunk_by_image_size():
    """Small images start with larger chunks (CPU_CHUNK_PIXELS), within 16 and 64."""
    first = explain_mod.first_image_chunk
    assert first(torch.empty(0, 1, 28, 28)) == 64
    assert first(torch.empty(0, 3, 48, 48)) == 28
    assert first(torch.empty(0, 3, 64, 64)) == 16
    assert first(torch.empty(0, 3, 224, 224)) == 16


def test_image_chunks_grow_after_fused_blocks():
    """Larger images: 16 first, then 64 once a chunk ran through fused blocks."""
    model, x = make("gap", n=90, size=64)
    explainer, sizes = clear_native.Clear(model, "deconvnet"), []
    batch = explainer._backproject_batch
    with mock.patch.object(explainer, "_backproject_batch",
                           side_effect=lambda images, *a: sizes.append(len(images)) or batch(images, *a)):
        explainer(x)
    assert explainer.last_routes.fast and all(explainer.last_routes.fast)
    assert sizes == [16, 64, 10]


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
@pytest.mark.parametrize("kwargs", [{}, {"classes": [4, 0, 2]}, {"target": "given"}], ids=str)
def test_cpu_image_chunks_equal_one_batch(method, kwargs):
    """On CPU the back-projection runs a few images at a time: same result."""
    model, x = make("gap", n=2 * explain_mod.CPU_FUSED_IMAGE_CHUNK + 5)
    kwargs = dict(kwargs)
    if kwargs.get("target") == "given":
        kwargs["target"] = torch.arange(x.shape[0]) % NUM_CLASSES
    explainer, sizes = clear_native.Clear(model, method), []
    batch = explainer._backproject_batch
    with mock.patch.object(explainer, "_backproject_batch",
                           side_effect=lambda images, *a: sizes.append(len(images)) or batch(images, *a)):
        chunked = explainer(x, keep_class_maps=True, **kwargs)
    assert sizes == [64, 64, 5]
    whole = clear_native.Clear(model, method, image_chunk=10 ** 6)(x, keep_class_maps=True, **kwargs)
    for f in fields(whole):
        a, b = getattr(chunked, f.name), getattr(whole, f.name)
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, equal_nan=True, msg=f.name)
        else:
            assert a == b, f.name


@pytest.mark.parametrize("method", ["deconvnet", "cam"])
def test_class_list_and_explicit_target(method):
    model, x = make("gap")
    full = clear_native.Clear(model, method)(x, keep_class_maps=True)
    classes = [4, 1, 2]
    target = torch.tensor([1, 2])
    got = clear_native.Clear(model, method)(x, target, classes=classes, keep_class_maps=True)
    torch.testing.assert_close(got.classes, torch.tensor(classes))
    torch.testing.assert_close(got.class_maps, full.class_maps[:, classes])
    want = reference.dominance(full.class_maps[:, classes], torch.tensor([1, 2]))  # local ids
    table = torch.tensor(classes)
    torch.testing.assert_close(got.dominant_class, table[want.dominant_class])
    torch.testing.assert_close(got.rival_class, table[want.rival_class])
    torch.testing.assert_close(got.target_response, full.class_maps[torch.arange(2), target])
    torch.testing.assert_close(got.target, target)
    with pytest.raises(ValueError, match="not among classes"):
        clear_native.Clear(model, method)(x, torch.tensor([0, 0]), classes=classes)


@pytest.mark.parametrize("method", ["deconvnet", "cam"])
def test_top_k_classes(method):
    model, x = make("gap", n=3)
    full = clear_native.Clear(model, method)(x, keep_class_maps=True)
    got = clear_native.Clear(model, method)(x, classes=2, keep_class_maps=True, class_chunk=1)
    table = full.logits.topk(2, 1).indices
    torch.testing.assert_close(got.classes, table)
    torch.testing.assert_close(got.class_maps, full.class_maps.gather(
        1, table[:, :, None, None].expand(-1, -1, 12, 12)))
    for n in range(3):
        assert set(got.dominant_class[n].unique().tolist()) <= set(table[n].tolist())
    # a target outside the top-k gets its own column, padded (-1, NaN) where not needed
    target = full.logits.argmin(1)
    target[0] = table[0, 0]
    got = clear_native.Clear(model, method)(x, target, classes=2, keep_class_maps=True)
    assert got.classes.shape == (3, 3)
    assert got.classes[0, 2] == -1 and bool(got.class_maps[0, 2].isnan().all())
    torch.testing.assert_close(got.classes[1:, 2], target[1:])
    torch.testing.assert_close(got.target_response, full.class_maps[torch.arange(3), target])
    assert bool((got.dominant_class >= 0).all())


def snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for k, v in before["state"].items():
        torch.testing.assert_close(after["state"][k], v, rtol=0, atol=0, msg=k)
    for p in model.parameters():
        assert p.grad is None
    for m in model.modules():
        for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            assert len(getattr(m, d, {})) == 0, (type(m).__name__, d)
    from torch.nn.modules import module as mod
    assert not mod._global_forward_hooks and not mod._global_backward_hooks
    from torch.overrides import _get_current_function_mode_stack
    assert not _get_current_function_mode_stack()


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient", "cam"])
def test_model_unchanged(method):
    model, x = make("bn")
    model.train()  # BatchNorm statistics would move: they must be restored
    model.features[0].weight.requires_grad_(False)
    model.features[1].eval()  # a mixed train / eval model
    before = snapshot(model)
    clear_native.Clear(model, method)(x)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["deconvnet", "cam"])
def test_under_no_grad_and_inference_mode(method):
    model, x = make("functional")
    want = clear_native.Clear(model, method)(x)
    with torch.no_grad():
        got = clear_native.Clear(model, method)(x)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(got.dominant_response, want.dominant_response)
    with torch.inference_mode():
        got = clear_native.Clear(model, method)(x)
    torch.testing.assert_close(got.dominant_response, want.dominant_response)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("class_chunk", [None, 1], ids=["batched", "one_class"])
def test_autocast(device, class_chunk):
    model, x = make("gap", device, size=16)
    with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
        got = clear_native.Clear(model, "deconvnet", class_chunk=class_chunk)(x, keep_class_maps=True)
        cam = clear_native.Clear(model, "cam")(x)
    want = clear_native.Clear(model, "deconvnet")(x, keep_class_maps=True)
    assert got.dominant_class.shape == (2, 16, 16) and cam.dominant_class.shape == (2, 16, 16)
    assert bool(torch.isfinite(got.dominant_response).all())
    torch.testing.assert_close(got.class_maps.float(), want.class_maps, rtol=0.1, atol=0.05)


def test_result_helpers():
    model, x = make("gap")
    got = clear_native.Clear(model, "deconvnet")(x)
    arrays = got.numpy()
    assert arrays["dominant_class"].shape == (2, 12, 12) and arrays["class_maps"] is None
    assert arrays["method"] == "deconvnet"
    moved = got.to(torch.float64)
    assert moved.dominant_response.dtype == torch.float64 and moved.logits.dtype == torch.float64
    assert moved.dominant_class.dtype == torch.int64 and moved.target.dtype == torch.int64
    assert got.cpu().device.type == "cpu"
    assert got.num_classes == NUM_CLASSES


def test_named_layer_for_cam():
    model, x = make("gap")
    got = clear_native.Clear(model, "cam", layer="features.4")(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, cam_maps(model, x))
    # An earlier layer: the contribution of everything above it (the head is then
    # conv -> ReLU -> GAP -> linear); before issue 13 this was an error.
    early = clear_native.Clear(model, "cam", layer="features.2")(x, keep_class_maps=True)
    split = (lambda m, t: m.features[:3](t), lambda m, f: m.fc(torch.flatten(m.pool(m.features[3:](f)), 1)))
    torch.testing.assert_close(early.class_maps, slow_cam_maps(model, x, split))
    with pytest.raises(ValueError, match="is not a module"):
        clear_native.Clear(model, "cam", layer="nope")


def test_bad_inputs():
    model, x = make("gap")
    with pytest.raises(ValueError, match=r"\(N, ch, H, W\), got shape \(3, 12, 12\)"):
        clear_native.Clear(model)(x[0])
    with pytest.raises(ValueError, match="method must be one of .* got 'lime'"):
        clear_native.Clear(model, "lime")
    with pytest.raises(ValueError, match="channel_reduce must be one of"):
        clear_native.Clear(model, channel_reduce="mean")
    with pytest.raises(ValueError, match="target must be \\(N,\\)"):
        clear_native.Clear(model)(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 5\)"):
        clear_native.Clear(model)(x, torch.tensor([1, 7]))
    with pytest.raises(ValueError, match="class_chunk"):
        clear_native.Clear(model, class_chunk=0)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        clear_native.Clear(lambda t: t)
    # cam on heads it refused before issue 13 (flatten + linear, a nonlinear function
    # between the pooling and the linear layer): the head's contribution (test_cam_any_head)

    class NoPooling(nn.Module):
        def forward(self, t):
            return torch.logsumexp(t, dim=(2, 3))

    with pytest.raises(ValueError, match="needs the last spatial feature map.*layer=.*reshape="):
        clear_native.Clear(NoPooling(), "cam")(x)

    class SpatialOut(GapNet):
        def forward(self, x):
            return self.features(x)

    with pytest.raises(ValueError, match="must return \\(N, C\\) logits"):
        clear_native.Clear(SpatialOut().eval(), "deconvnet")(x)


def test_no_memory_growth():
    model, x = make("functional", n=1, size=8)
    explainer = clear_native.Clear(model, "guided")
    cam = clear_native.Clear(model, "cam")
    fused = clear_native.Clear(model, "deconvnet", class_chunk=1)  # fused blocks, response signal
    fused_logit = clear_native.Clear(model, "deconvnet", signal="logit", class_chunk=1)  # one-image top

    def live_tensors():
        gc.collect()
        return sum(type(o) in (torch.Tensor, nn.Parameter) for o in gc.get_objects())

    for _ in range(10):
        explainer(x)
        cam(x)
        fused(x)
        fused_logit(x)
    before = live_tensors()
    for _ in range(200):
        explainer(x)
        cam(x)
        fused(x)
        fused_logit(x)
    assert live_tensors() <= before
    tracemalloc.start()
    for _ in range(30):  # warm-up under tracing: allocator and cache growth that stops
        explainer(x)
        cam(x)
    gc.collect()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(100):  # a leak of >= 0.7 KB per call pair would exceed the bound
        explainer(x)
        cam(x)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    growth = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
    top = [str(s) for s in snap1.compare_to(snap0, "lineno")[:8]]
    tracemalloc.stop()
    assert growth < 64 * 1024, (growth, top)
    assert_unchanged(model, snapshot(model))


# -- cam for any head (issue 13) -------------------------------------------------------------

CAM_HEADS = {
    "tanh": (TanhAfterPool, SPLITS["gap"][0], lambda m, f: m.fc(torch.tanh(m.pool(f).flatten(1)))),
    "layernorm": (LayerNormHead, SPLITS["gap"][0],
                  lambda m, f: m.fc(m.norm(F.adaptive_avg_pool2d(f, 1).flatten(1)))),
    "mlp": (MLPNet, *SPLITS["mlp"]),
    "flatten": (FlattenNet, *SPLITS["flatten"]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head", list(CAM_HEADS))
def test_cam_any_head(head, device):
    """MLP, LayerNorm + linear, flatten + linear, a nonlinearity after the pooling: the
    per-position contribution h w sum_k f dy_c/df (+ offset), from one batched backward
    pass per class chunk; its spatial mean is the logit."""
    cls, features, head_fn = CAM_HEADS[head]
    torch.manual_seed(0)
    model, x = cls().to(device).eval(), torch.randn(3, 3, 12, 12, device=device)
    want = slow_cam_maps(model, x, (features, head_fn))
    explainer = clear_native.Clear(model, "cam")
    for chunk in (None, 2):
        got = explainer(x, keep_class_maps=True, class_chunk=chunk)
        torch.testing.assert_close(got.class_maps, want)
        assert_dominance(got, got.class_maps, got.prediction)
    assert explainer.last_source.startswith("head contribution")
    fast = explainer(x)  # no kept maps: the same dominance
    torch.testing.assert_close(fast.dominant_response, got.dominant_response)
    part = explainer(x, classes=[3, 0, 1, 2, 4], target=torch.tensor([0, 3, 1], device=device),
                     keep_class_maps=True)
    torch.testing.assert_close(part.class_maps, want[:, [3, 0, 1, 2, 4]])
    top = explainer(x, classes=2, keep_class_maps=True)
    torch.testing.assert_close(top.class_maps, want.gather(1, top.classes[:, :, None, None].expand(-1, -1, 12, 12)))
    # the spatial mean of each class map is the logit (nearest x2 upsampling keeps the mean)
    near = clear_native.Clear(model, "cam", interpolation="nearest")(x, keep_class_maps=True)
    torch.testing.assert_close(near.class_maps.mean((2, 3)), near.logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_name", ["gap", "convgap1x1", "convgap3x3", "bn", "functional", "flatten"])
def test_cam_paths_agree(model_name):
    """The exact paths (linear head: W[c] . f + b[c], fused; C-kernel conv: its class maps)
    and the contribution path give the same maps: the contribution is scaled by h w so that
    its spatial mean is the logit, as W . f + b."""
    model, x = make(model_name, n=3)
    explainer = clear_native.Clear(model, "cam")
    exact = explainer(x, keep_class_maps=True)
    routes = {"gap": "linear head (fused)", "bn": "linear head (fused)", "functional": "linear head (fused)",
              "convgap1x1": "1x1 class convolution (fused)", "convgap3x3": "class maps of the last convolution",
              "flatten": "head contribution"}
    assert explainer.last_source.startswith(routes[model_name]), explainer.last_source
    # the same model's contribution source (what any other head gets), class by class
    _, general, how = cam_source(model, x, explainer._site, repr(explainer), exact=False)
    assert how.startswith("head contribution")
    ids = torch.arange(NUM_CLASSES).expand(x.shape[0], -1)
    up = Upsampled(general, x.shape[-2:], "bilinear").maps(ids, True)
    torch.testing.assert_close(up, exact.class_maps)
    if model_name != "flatten":
        torch.testing.assert_close(exact.class_maps, cam_maps(model, x))


def test_cam_contribution_is_one_batched_backward_per_chunk():
    model, x = make("mlp", n=2)
    explainer = clear_native.Clear(model, "cam")
    explainer(x)
    assert explainer.last_routes.passes == [NUM_CLASSES]  # 5 classes, one pass
    explainer(x, class_chunk=2)
    assert explainer.last_routes.passes == [2, 2, 1]


def test_cam_model_unchanged_and_errors():
    model, x = make("mlp")
    before = snapshot(model)
    clear_native.Clear(model, "cam")(x, keep_class_maps=True)
    assert_unchanged(model, before)
    bypass, xb = make("bypass")
    with pytest.raises(ValueError, match="bypasses the feature layer.*layer="):
        clear_native.Clear(bypass, "cam")(xb)

    class CutMLP(MLPNet):  # the image path is cut (no gradient to the input): cam still works
        def forward(self, t):
            return super().forward(t.detach())

    torch.manual_seed(0)
    cut = CutMLP().eval()
    got = clear_native.Clear(cut, "cam")(x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, slow_cam_maps(cut, x, SPLITS["mlp"]))
    with pytest.raises(TypeError, match="reshape must be a callable"):
        clear_native.Clear(model, "cam", reshape=3)
    with pytest.raises(ValueError, match="reshape= names the feature layer"):
        clear_native.Clear(model, "deconvnet", signal="logit", reshape=lambda t: t)


# -- token models (issue 13) ---------------------------------------------------------------

def _token_split(model):
    """(features, head, to_grid, from_grid) of a TinyViT, written out: f = the last block's input."""
    p = model.prefix
    features = lambda m, x: m.layers()[0](m.embed(x))
    head = lambda m, t: m.head_of(m.layers()[1](t))
    to_grid = lambda t: t[:, p:].reshape(t.shape[0], 3, 3, t.shape[2]).permute(0, 3, 1, 2)

    def from_grid(s, like):
        out = torch.zeros_like(like)
        out[:, p:] = s.permute(0, 2, 3, 1).reshape(like.shape[0], 9, like.shape[2])
        return out

    return features, head, to_grid, from_grid


def slow_grid_response_maps(model, images, method, split, to_grid, from_grid, reduce="sum"):
    """The response signal class by class where f is not itself a map: M_c on the grid of f,
    the signal g_c * relu(M_c) put back into f's layout (zero at the prefix tokens), then
    down from f with the rule (HookedReLU)."""
    features, head = split
    with torch.enable_grad():
        f0 = features(model, images).detach()
        signals = []
        for k in range(model(images).shape[1]):
            fr = f0.clone().requires_grad_(True)
            y = head(model, fr)[:, k]
            (g,) = torch.autograd.grad(y.sum(), fr)
            gg = to_grid(g)
            contrib = (to_grid(f0) * gg).sum(1)
            m = contrib + ((y.detach() - contrib.sum((1, 2))) / contrib[0].numel()).view(-1, 1, 1)
            signals.append(from_grid(gg * m.clamp(min=0).unsqueeze(1), f0))
    out = []
    with HookedReLU(method), torch.enable_grad():
        for s in signals:
            x = images.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(features(model, x), x, s)
            out.append(g.sum(1) if reduce == "sum" else g.abs().amax(1))
    return torch.stack(out, 1)


@pytest.mark.parametrize("kind", ["timm", "timm_avg_2prefix", "torchvision", "reshape"])
@pytest.mark.parametrize("method", ["cam", *BACKPROP])
def test_token_models(method, kind):
    """Patch tokens of the last block's input reshaped to their grid (prefix tokens dropped),
    from what the model says (timm, torchvision) or from reshape=: cam and the response
    signal against class-by-class loops that reshape by hand."""
    torch.manual_seed(0)
    style = {"timm_avg_2prefix": "timm", "reshape": None}.get(kind, kind)
    model = TinyViT(prefix=2 if kind == "timm_avg_2prefix" else 1, style=style,
                    pool="avg" if kind == "timm_avg_2prefix" else "token").eval()
    x = torch.randn(2, 3, 12, 12)
    features, head, to_grid, from_grid = _token_split(model)
    kwargs = {"layer": "blocks.0", "reshape": to_grid} if kind == "reshape" else {}
    explainer = clear_native.Clear(model, method, channel_reduce=None if method == "cam" else "sum", **kwargs)
    got = explainer(x, keep_class_maps=True)
    if method == "cam":
        want = slow_cam_maps(model, x, (features, head), to_grid)
        assert explainer.last_source.startswith("head contribution at the "
                                                + ("reshape=" if kind == "reshape" else "token grid 3x3"))
    else:
        want = slow_grid_response_maps(model, x, method, (features, head), to_grid, from_grid)
    assert "(2, 8, 3, 3)" in explainer.last_source
    torch.testing.assert_close(got.class_maps, want)
    assert_dominance(got, got.class_maps, got.prediction)


def test_token_model_errors():
    torch.manual_seed(0)
    model, x = TinyViT(style=None).eval(), torch.randn(2, 3, 12, 12)
    for method in ("cam", "guided"):  # no map, no declared grid: name the layer (and reshape=)
        with pytest.raises(ValueError, match="needs the last spatial feature map.*layer=.*reshape="):
            clear_native.Clear(model, method)(x)
        with pytest.raises(ValueError, match=r"shape \(2, 10, 8\), not an \(N, K, h, w\) map.*reshape="):
            clear_native.Clear(model, method, layer="blocks.0")(x)
        with pytest.raises(ValueError, match=r"reshape= must return an \(N, K, h, w\) map"):
            clear_native.Clear(model, method, layer="blocks.0", reshape=lambda t: t[:, 1:])(x)
    timm_like = TinyViT(style="timm").eval()
    with pytest.raises(ValueError, match=r"not the model's patch tokens \(N, 1 \+ 3 x 3, D\).*reshape="):
        clear_native.Clear(timm_like, "cam", layer="head")(x)  # (N, 5): not tokens on the grid
    # a named token layer is reshaped on the declared grid as well
    named = clear_native.Clear(timm_like, "cam", layer="blocks.0")(x, keep_class_maps=True)
    auto = clear_native.Clear(timm_like, "cam")(x, keep_class_maps=True)
    torch.testing.assert_close(named.class_maps, auto.class_maps)
    # a token model inside a wrapper (e.g. input normalisation): found in the submodules
    wrapped = nn.Sequential(nn.Identity(), timm_like)
    explainer = clear_native.Clear(wrapped, "cam")
    torch.testing.assert_close(explainer(x, keep_class_maps=True).class_maps, auto.class_maps)
    assert "'1.blocks.1'" in explainer.last_source


@pytest.mark.parametrize("method", ["cam", *BACKPROP])
def test_channels_last_maps(method):
    """timm Swin-style channels-last maps (output_fmt = "NHWC") are permuted to (N, D, h, w)."""
    torch.manual_seed(0)
    model, x = ChannelsLastNet().eval(), torch.randn(2, 3, 12, 12)
    features = lambda m, t: m.norm(m.features(t).permute(0, 2, 3, 1))  # the input of the pooling
    head = lambda m, f: m.fc(f.mean((1, 2)))
    to_grid = lambda t: t.permute(0, 3, 1, 2)
    explainer = clear_native.Clear(model, method, channel_reduce=None if method == "cam" else "sum")
    got = explainer(x, keep_class_maps=True)
    if method == "cam":  # a linear head on the mean of the permuted map: the fused path
        want = slow_cam_maps(model, x, (features, head), to_grid)
        assert explainer.last_source.startswith("linear head (fused)")
        fast = explainer(x)
        torch.testing.assert_close(fast.dominant_response, got.dominant_response)
    else:
        want = slow_grid_response_maps(model, x, method, (features, head), to_grid,
                                       lambda s, like: s.permute(0, 2, 3, 1))
    assert "channels-last map" in explainer.last_source and "(2, 8, 6, 6)" in explainer.last_source
    torch.testing.assert_close(got.class_maps, want)


@pytest.mark.parametrize("geometry", [(48, 1, 28, 28, 3, 1, 1, 1), (2, 3, 33, 30, 7, 2, 3, 1), (3, 2, 13, 11, 3, 2, 0, 2),
                                      (2, 3, 9, 10, 4, 3, 2, 1), (1, 1, 5, 5, 5, 1, 0, 1), (2, 4, 8, 7, 2, 2, 1, 1)],
                         ids=str)
def test_image_layer_input_gradient(geometry):
    """The image layer's input gradient (a GEMM, then one strided add per tap) equals
    F.fold of the same columns and torch's own convolution backward (strides, padding,
    dilation, kernels larger than the stride)."""
    from clear_native._fusion import _col2im, _ConvFewInputs

    n, c, h, w, k, s, p, d = geometry
    g = torch.Generator().manual_seed(sum(geometry))
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    cols = torch.randn(n, c * k * k, ho * wo, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_col2im(cols.view(n, c, k, k, ho, wo), (h, w), (s, s), (p, p), (d, d)),
                               F.fold(cols, (h, w), (k, k), dilation=d, padding=p, stride=s))
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, c, k, k, generator=g, dtype=torch.float64)
    y = _ConvFewInputs.apply(x, weight, None, (s, s), (p, p), (d, d))
    torch.testing.assert_close(y, F.conv2d(x, weight, None, s, p, d))
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(y, x, grad)
    (want,) = torch.autograd.grad(F.conv2d(x, weight, None, s, p, d), x, grad)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil", [((3, 8, 9, 11), 2, 2, 0, False),
                                                             ((3, 8, 9, 11), 2, 2, 0, True),
                                                             ((2, 16, 12, 12), 3, 3, 1, False),
                                                             ((2, 9, 7, 10), [2, 3], [2, 3], [1, 0], True),
                                                             ((2, 4, 6, 6), 2, 2, 0, False)], ids=str)
def test_fused_pool_equals_torch_max_pool(shape, kernel, stride, padding, ceil):
    """The fused blocks' pool (through channels-last memory) gives torch's NCHW
    max_pool2d_with_indices exactly: values, switches, ties and NaN."""
    from clear_native._fusion import _max_pool2d_with_indices

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, shape, generator=g).float()  # many ties
    x[torch.rand(shape, generator=g) < 0.1] = float("nan")
    pair = (lambda v: [v, v] if isinstance(v, int) else v)
    want = torch.ops.aten.max_pool2d_with_indices(x, pair(kernel), pair(stride), pair(padding), [1, 1], ceil)
    got = _max_pool2d_with_indices(x, pair(kernel), pair(stride), pair(padding), ceil)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got[1], want[1]) and got[0].is_contiguous() and got[1].is_contiguous()
