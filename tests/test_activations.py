"""The backward rules at every activation they cover (clear_native._relu_rules), against
per-class loops written here with tensor hooks, and the warnings where a rule does not
reach an activation.

The rule, for an activation f with forward input t and backward signal g at its output:
gradient g * f'(t); deconvnet relu(g); guided relu(g) * f'(t) * (t > 0).
"""
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clear_native
from clear_native import _fusion
from clear_native._relu_rules import relu_rule
from models import ACT_NUM_CLASSES as NUM_CLASSES, ActNet, MixedNet

pytestmark = pytest.mark.usefixtures("one_thread", "raw_class_scale")

BACKPROP = ["deconvnet", "guided", "gradient"]
CLIP = 1.0  # upper bound of the clipped forms


# -- the activations, written out: f(t, model), plain torch, out of place -----------------

def _relu(t, m):
    return torch.where(t > 0, t, 0)


def _clipped(t, m):
    return torch.where(t > CLIP, CLIP, _relu(t, m))


def _leaky(a):
    return lambda t, m: torch.where(t > 0, t, a * t)


def _prelu_module(t, m):
    return torch.where(t > 0, t, m.act.weight * t)


def _silu(t, m):
    return t * torch.sigmoid(t)


def _gelu(t, m):
    return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))


def _gelu_tanh(t, m):
    return 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3)))


def _hardswish(t, m):
    return t * (t + 3).clamp(0, 6) / 6


def _mish(t, m):
    return t * torch.tanh(torch.log1p(torch.exp(t)))


def _elu(alpha, scale=1.0):
    return lambda t, m: scale * torch.where(t > 0, t, alpha * (torch.exp(t) - 1))


def _celu(alpha):
    return lambda t, m: torch.where(t > 0, t, alpha * (torch.exp(t / alpha) - 1))


_SELU = _elu(1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


def _softplus(beta):
    return lambda t, m: torch.log1p(torch.exp(beta * t)) / beta


_W = torch.tensor([0.1], dtype=torch.float64)

# (id, factory of the activation as the model calls it, the same written out)
FORMS = [
    # clamp(min=0): a ReLU
    ("torch.clamp(min=0)", lambda: lambda t: torch.clamp(t, min=0), _relu),
    ("torch.clamp(t,0)", lambda: lambda t: torch.clamp(t, 0), _relu),
    ("Tensor.clamp(min=0)", lambda: lambda t: t.clamp(min=0), _relu),
    ("Tensor.clamp(0,None)", lambda: lambda t: t.clamp(0, None), _relu),
    ("Tensor.clamp_(min=0)", lambda: lambda t: t.clamp_(min=0), _relu),
    ("torch.clamp_(t,0)", lambda: lambda t: torch.clamp_(t, 0), _relu),
    ("torch.clamp_min", lambda: lambda t: torch.clamp_min(t, 0), _relu),
    ("Tensor.clamp_min", lambda: lambda t: t.clamp_min(0.0), _relu),
    ("Tensor.clamp_min_", lambda: lambda t: t.clamp_min_(0), _relu),
    ("torch.clamp_min_", lambda: lambda t: torch.clamp_min_(t, 0), _relu),
    ("Tensor.clip(0)", lambda: lambda t: t.clip(0), _relu),
    ("torch.clip(min=0,max=inf)", lambda: lambda t: torch.clip(t, min=0, max=math.inf), _relu),
    # clamp(0, t): a clipped ReLU
    ("torch.clamp(t,0,c)", lambda: lambda t: torch.clamp(t, 0, CLIP), _clipped),
    ("Tensor.clamp(min=0,max=c)", lambda: lambda t: t.clamp(min=0, max=CLIP), _clipped),
    ("Tensor.clamp_(0,c)", lambda: lambda t: t.clamp_(0, CLIP), _clipped),
    ("torch.clip(t,0,c)", lambda: lambda t: torch.clip(t, 0, CLIP), _clipped),
    ("Tensor.clip_(0,c)", lambda: lambda t: t.clip_(0.0, CLIP), _clipped),
    # LeakyReLU / PReLU
    ("nn.LeakyReLU", lambda: nn.LeakyReLU(0.2), _leaky(0.2)),
    ("nn.LeakyReLU(inplace)", lambda: nn.LeakyReLU(0.2, inplace=True), _leaky(0.2)),
    ("F.leaky_relu", lambda: lambda t: F.leaky_relu(t), _leaky(0.01)),
    ("F.leaky_relu(inplace)", lambda: lambda t: F.leaky_relu(t, 0.3, True), _leaky(0.3)),
    ("F.leaky_relu_", lambda: lambda t: F.leaky_relu_(t, 0.2), _leaky(0.2)),
    ("nn.PReLU", lambda: nn.PReLU(), _prelu_module),
    ("Tensor.prelu", lambda: lambda t: t.prelu(_W), _leaky(0.1)),
    # smooth
    ("nn.SiLU", lambda: nn.SiLU(), _silu),
    ("nn.SiLU(inplace)", lambda: nn.SiLU(inplace=True), _silu),
    ("F.silu", lambda: F.silu, _silu),
    ("F.silu(inplace)", lambda: lambda t: F.silu(t, inplace=True), _silu),
    ("nn.GELU", lambda: nn.GELU(), _gelu),
    ("nn.GELU(tanh)", lambda: nn.GELU(approximate="tanh"), _gelu_tanh),
    ("F.gelu", lambda: F.gelu, _gelu),
    ("nn.Hardswish", lambda: nn.Hardswish(), _hardswish),
    ("nn.Hardswish(inplace)", lambda: nn.Hardswish(inplace=True), _hardswish),
    ("F.hardswish", lambda: F.hardswish, _hardswish),
    ("nn.Mish", lambda: nn.Mish(), _mish),
    ("nn.Mish(inplace)", lambda: nn.Mish(inplace=True), _mish),
    ("F.mish", lambda: F.mish, _mish),
    ("nn.ELU", lambda: nn.ELU(0.5), _elu(0.5)),
    ("nn.ELU(inplace)", lambda: nn.ELU(inplace=True), _elu(1.0)),
    ("F.elu_", lambda: lambda t: F.elu_(t, 0.7), _elu(0.7)),
    ("nn.CELU", lambda: nn.CELU(0.5), _celu(0.5)),
    ("torch.celu_", lambda: lambda t: torch.celu_(t, 2.0), _celu(2.0)),
    ("nn.SELU", lambda: nn.SELU(), _SELU),
    ("nn.SELU(inplace)", lambda: nn.SELU(inplace=True), _SELU),
    ("torch.selu", lambda: torch.selu, _SELU),
    ("nn.Softplus", lambda: nn.Softplus(beta=2.0), _softplus(2.0)),
    ("F.softplus", lambda: F.softplus, _softplus(1.0)),
]
FORM_IDS = [f[0] for f in FORMS]
# One module form per activation, for the default signal.
PER_ACTIVATION = ["Tensor.clamp(min=0)", "Tensor.clamp_(0,c)", "nn.LeakyReLU", "nn.PReLU", "nn.SiLU",
                  "nn.GELU", "nn.Hardswish", "nn.Mish", "nn.ELU", "nn.CELU", "nn.SELU", "nn.Softplus"]


def _form(name):
    return FORMS[FORM_IDS.index(name)]


def _hooked(ref, model, rule):
    """The activation ``ref`` with the rule's backward, from tensor hooks."""

    def act(t):
        if rule == "gradient":
            return ref(t, model)
        if rule == "deconvnet":  # forward f(t), backward identity, then rectified
            y = t + (ref(t, model) - t).detach()
            y.register_hook(lambda g: g.clamp(min=0))
            return y
        mask = (t > 0).to(t.dtype)  # guided: rectified at the output, f'(t), masked by t > 0
        u = t * 1
        u.register_hook(lambda g: g * mask)
        y = ref(u, model)
        y.register_hook(lambda g: g.clamp(min=0))
        return y

    return act


def slow_maps(model, x, rule, ref):
    """(N, C, H, W): one forward and one backward pass per class, channel sum."""
    out = []
    for k in range(NUM_CLASSES):
        xr = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xr, act=_hooked(ref, model, rule))[:, k].sum(), xr)
        out.append(g.sum(1))
    return torch.stack(out, 1)


def _setup(form):
    _, make, ref = form
    model = ActNet(make()).double().eval()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    return model, x, ref


def _no_warning_call(explainer, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return explainer(x, **kw)


# -- every activation and form against the slow loop --------------------------------------

@pytest.mark.parametrize("method", BACKPROP)
@pytest.mark.parametrize("form", FORMS, ids=FORM_IDS)
def test_rule_at_every_activation(form, method):
    model, x, ref = _setup(form)
    got = _no_warning_call(clear_native.Clear(model, method, signal="logit", channel_reduce="sum"),
                           x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, slow_maps(model, x, method, ref))


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
@pytest.mark.parametrize("name", ["Tensor.clamp(min=0)", "Tensor.clamp_(0,c)", "nn.LeakyReLU(inplace)",
                                  "nn.SiLU", "F.gelu"])
def test_one_class_per_pass(name, method):
    """class_chunk=1 (CPU: the fused conv -> ReLU -> max-pool route where it applies)."""
    model, x, ref = _setup(_form(name))
    got = _no_warning_call(clear_native.Clear(model, method, signal="logit", channel_reduce="sum",
                                              class_chunk=1), x, keep_class_maps=True)
    torch.testing.assert_close(got.class_maps, slow_maps(model, x, method, ref))


@pytest.mark.parametrize("name, fused", [("Tensor.clamp(min=0)", 1), ("torch.clamp_min_", 1),
                                         ("Tensor.clamp_(0,c)", 0), ("nn.LeakyReLU", 0), ("nn.SiLU", 0)])
def test_fused_blocks_for_plain_relu_only(name, fused):
    """clamp(min=0) is a ReLU and fuses with its max-pool; clipped, leaky and smooth
    activations keep torch's own nodes."""
    model, x, _ = _setup(_form(name))
    model.requires_grad_(False)  # as Clear runs it
    with torch.enable_grad(), _fusion.fused_relu_rule("guided") as mode:
        model(x.requires_grad_(True))
    assert len(mode.sites) == fused
    mode.release()


def test_forms_exercise_the_activation():
    """Both signs at every layer, and values above the clip in the first."""
    model, x, _ = _setup(_form("Tensor.clamp_(0,c)"))
    seen = []
    model(x, act=lambda t: seen.append(t.detach()) or t.clamp(0, CLIP))
    assert all((t < 0).any() and (t > 0).any() for t in seen)
    assert (seen[0] > CLIP).any() and (seen[1] > CLIP).any()


@pytest.mark.parametrize("name", PER_ACTIVATION)
def test_default_signal(name):
    """signal="response" (the default) runs with every activation, without a warning,
    and the rules differ from the gradient."""
    model, x, _ = _setup(_form(name))
    maps = {m: _no_warning_call(clear_native.Clear(model, m), x, keep_class_maps=True) for m in BACKPROP}
    for m in BACKPROP:
        assert maps[m].class_maps.shape == (3, NUM_CLASSES, 12, 12)
        assert torch.isfinite(maps[m].class_maps).all()
        assert maps[m].dominant_class.shape == (3, 12, 12)
    assert not torch.allclose(maps["guided"].class_maps, maps["gradient"].class_maps)
    assert not torch.allclose(maps["deconvnet"].class_maps, maps["gradient"].class_maps)


# -- the rule, stated at one activation ------------------------------------------------------

T = torch.tensor([-2.0, -1.0, 1.0, 2.0, -3.0, 0.5], dtype=torch.float64)
G = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, 3.0], dtype=torch.float64)


def _rule_grad(method, fn):
    t = T.clone().requires_grad_(True)
    with relu_rule(method) as mode:
        y = fn(t * 1)
    assert mode.applied == 1
    (g,) = torch.autograd.grad(y, t, G)
    return g


@pytest.mark.parametrize("method", BACKPROP)
def test_leaky_relu_rule(method):
    """LeakyReLU: deconvnet relu(g) (the slope ignored, as the forward values); guided
    relu(g) (t > 0) (the negative-slope part dropped); gradient plain."""
    want = {"gradient": G * torch.where(T > 0, 1.0, 0.2), "deconvnet": G.clamp(min=0),
            "guided": G.clamp(min=0) * (T > 0)}[method]
    torch.testing.assert_close(_rule_grad(method, lambda t: F.leaky_relu(t, 0.2)), want)
    torch.testing.assert_close(_rule_grad(method, nn.LeakyReLU(0.2, inplace=True)), want)


@pytest.mark.parametrize("method", BACKPROP)
def test_silu_rule(method):
    """SiLU: deconvnet relu(g); guided relu(g) f'(t) (t > 0); gradient g f'(t)."""
    s = torch.sigmoid(T)
    slope = s * (1 + T * (1 - s))
    want = {"gradient": G * slope, "deconvnet": G.clamp(min=0),
            "guided": G.clamp(min=0) * slope * (T > 0)}[method]
    torch.testing.assert_close(_rule_grad(method, F.silu), want)


@pytest.mark.parametrize("fn", [lambda t: t.clamp(min=-1), lambda t: t.clamp(max=0), lambda t: t.clamp(1),
                                lambda t: t.clamp(min=torch.zeros(())), lambda t: torch.clamp_min(t, 0.5),
                                lambda t: t.clamp(0, -1), lambda t: torch.sigmoid(t) * t],
                         ids=["min=-1", "max=0", "min=1", "tensor-min", "clamp_min(0.5)", "max<0", "x*sigmoid"])
def test_other_clamps_are_not_activations(fn):
    """Only clamp(min=0[, max > 0]) is a ReLU; other clamps keep their gradient unwatched."""
    t = T.clone().requires_grad_(True)
    with relu_rule("deconvnet") as mode:
        y = fn(t * 1)
    (g,) = torch.autograd.grad(y, t, G)
    t2 = T.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(fn(t2 * 1), t2, G)
    assert mode.applied == 0 and mode.unruled() == {}
    torch.testing.assert_close(g, want)


def test_trainable_prelu_keeps_its_gradient():
    """A PReLU whose weight requires grad is left plain (the weight's gradient flows) and
    reported as unruled."""
    t = T.clone().requires_grad_(True)
    w = torch.tensor([0.25], dtype=torch.float64, requires_grad=True)
    with relu_rule("guided") as mode:
        y = F.prelu(t * 1, w)
    gt, gw = torch.autograd.grad(y, (t, w), G)
    assert mode.applied == 0 and mode.unruled() == {"prelu (trainable weight)": 1}
    torch.testing.assert_close(gt, G * torch.where(T > 0, 1.0, 0.25))
    torch.testing.assert_close(gw, (G * T * (T <= 0)).sum().reshape(1))


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_head_activations_take_the_plain_gradient(method):
    """With the feature layer watched, smooth activations above it (the head) give
    d logit / d features plain, those below take the rule."""
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.SiLU(), nn.Conv2d(6, 8, 3, padding=1),
                          nn.GELU()).double()
    head = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.SiLU(inplace=True),
                         nn.Linear(16, NUM_CLASSES)).double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    with relu_rule(method, watch_features=True) as mode:
        logits = head(feats(x).mean((2, 3)))
    f = mode.feature_layer()
    assert mode.applied == 4
    (got,) = torch.autograd.grad(logits[:, 1].sum(), f, retain_graph=True)
    fd = f.detach().requires_grad_(True)
    (want,) = torch.autograd.grad(head(fd.mean((2, 3)))[:, 1].sum(), fd)
    torch.testing.assert_close(got, want)
    # below the feature layer, the rule
    (gx,) = torch.autograd.grad(f, x, want)
    silu, gelu = _hooked(lambda t, m: F.silu(t), None, method), _hooked(lambda t, m: F.gelu(t), None, method)
    x2 = x.detach().requires_grad_(True)
    (wx,) = torch.autograd.grad(gelu(feats[2](silu(feats[0](x2)))), x2, want)
    torch.testing.assert_close(gx, wx)


# -- warnings: never a silent fallback ---------------------------------------------------------

UNRULED = [
    ("tanh", torch.tanh), ("tanh", nn.Tanh()), ("tanh", lambda t: t.tanh_()), ("softsign", nn.Softsign()),
    ("hardtanh", nn.Hardtanh()), ("threshold", nn.Threshold(0.1, 0.0)), ("rrelu", nn.RReLU()),
    ("logsigmoid", nn.LogSigmoid()), ("tanhshrink", nn.Tanhshrink()), ("softshrink", nn.Softshrink()),
]


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
@pytest.mark.parametrize("name, mid", UNRULED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(UNRULED)])
def test_unruled_activation_warns_once(name, mid, method):
    model, x = MixedNet(mid).eval(), torch.randn(2, 3, 12, 12)
    explainer = clear_native.Clear(model, method)
    with pytest.warns(UserWarning, match=rf"{name} \(1 call\) kept their plain gradient.*mix the rule"):
        explainer(x)
    _no_warning_call(explainer, x)  # once per explainer
    _no_warning_call(clear_native.Clear(model, "gradient"), x)  # nothing to warn about


def test_no_covered_activation_warns_and_names_what_was_called():
    class TanhNet(ActNet):
        def forward(self, x, act=None):
            y = F.max_pool2d(torch.tanh(self.c1(x)), 2)
            return self.fc(F.softsign(self.c3(torch.tanh(self.c2(y)))).mean((2, 3)))

    model, x = TanhNet(None).eval(), torch.randn(2, 3, 12, 12)
    with pytest.warns(UserWarning, match=r"no activation that the rule covers.*plain\s+gradients.*"
                                         r"called: tanh \(2 calls\), softsign \(1 call\).*rules reach.*SiLU"):
        clear_native.Clear(model, "guided", signal="logit")(x)


def test_unruled_activation_in_the_head():
    """The response signal takes the head's plain gradient by definition: a tanh there is
    not a fallback; with signal="logit" the rule would have applied there, so it warns."""
    model, x = MixedNet(torch.tanh, where="head").eval(), torch.randn(2, 3, 12, 12)
    _no_warning_call(clear_native.Clear(model, "guided"), x)
    with pytest.warns(UserWarning, match=r"tanh \(1 call\) kept their plain gradient"):
        clear_native.Clear(model, "guided", signal="logit")(x)


def test_sigmoid_gates_are_not_watched():
    """Squeeze-and-excitation gates (sigmoid, hardsigmoid) and x * sigmoid(x) written out
    are not activations the rules claim: no warning."""
    class GateNet(ActNet):
        def forward(self, x, act=None):
            y = F.max_pool2d(F.relu(self.c1(x)), 2)
            y = F.relu(self.c2(y))
            y = y * torch.sigmoid(y.mean((2, 3), keepdim=True)) * F.hardsigmoid(y.amax((2, 3), keepdim=True))
            y = self.c3(y)
            return self.fc((y * torch.sigmoid(y)).mean((2, 3)))

    model, x = GateNet(None).eval(), torch.randn(2, 3, 12, 12)
    _no_warning_call(clear_native.Clear(model, "guided"), x)
    _no_warning_call(clear_native.Clear(model, "deconvnet", signal="logit"), x)
