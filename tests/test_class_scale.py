"""Class-comparable magnitudes (``Clear(class_scale=)``): each class map's positive mass is
the class's rectified evidence ``sum_ij relu(M_c)`` (``relu(y_c)`` for the logit signal),
so that the argmax over classes compares evidence, not the gain of the class's weights."""
import pytest
import torch
import torch.nn as nn

import clear_native
from clear_native._backproject import scale_to_evidence
from models import GapNet, NUM_CLASSES

BACKPROP = ("deconvnet", "guided", "gradient")


def _features_and_logits(model, x):
    """f (N, K, h, w) at the GapNet's feature layer and the logits, by a forward hook."""
    seen = {}
    handle = model.features.register_forward_hook(lambda m, i, o: seen.setdefault("f", o.detach()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    return seen["f"], logits


def _evidence(model, x):
    """(N, C): sum_ij relu(M_c) with M_c = (W[c] . f(i, j) + b[c]) / (h w), written out."""
    f, _ = _features_and_logits(model, x)
    h, w = f.shape[-2:]
    m = (torch.einsum("nkij,ck->ncij", f, model.fc.weight) + model.fc.bias[None, :, None, None]) / (h * w)
    return m.clamp(min=0).sum((2, 3))


@pytest.mark.parametrize("method", BACKPROP)
@pytest.mark.parametrize("reduce", ["sum", "max_abs"])
def test_positive_mass_is_the_class_evidence(method, reduce):
    model = GapNet().eval().double()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    maps = clear_native.Clear(model, method, class_scale="evidence", channel_reduce=reduce)(
        x, keep_class_maps=True).class_maps
    want = _evidence(model, x)
    torch.testing.assert_close(maps.clamp(min=0).sum((2, 3)), want, rtol=1e-9, atol=1e-12)
    assert (want > 0).any()


@pytest.mark.parametrize("method", BACKPROP)
def test_evidence_maps_are_the_raw_maps_rescaled_per_class(method):
    model = GapNet().eval().double()
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    raw = clear_native.Clear(model, method, class_scale="raw")(x, keep_class_maps=True).class_maps
    ev = clear_native.Clear(model, method, class_scale="evidence")(x, keep_class_maps=True).class_maps
    positive = raw.clamp(min=0).sum((2, 3))
    factor = torch.where(positive > 0, _evidence(model, x) / positive, torch.zeros(()).double())
    torch.testing.assert_close(ev, raw * factor[..., None, None], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ev, raw)  # the scale changed something


def test_logit_signal_mass_is_the_rectified_logit():
    model = GapNet().eval().double()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    maps = clear_native.Clear(model, "guided", signal="logit", class_scale="evidence")(x, keep_class_maps=True)
    pos = maps.class_maps.clamp(min=0).sum((2, 3))
    want = maps.logits.clamp(min=0)
    has = pos > 0  # a rectified map with no positive pixel cannot take a mass
    torch.testing.assert_close(pos[has], want[has].to(pos.dtype), rtol=1e-9, atol=1e-12)


class GainNet(nn.Module):
    """1x1 conv (1 -> 2) + ReLU + GAP + identity head. Class 0's channel has 10x the
    weight and a bias that takes most of it back: a large gain with little evidence.
    On an image of 1s (left) and 2s (right): f_0 = relu(10 x - 9.5) = 0.5 | 10.5,
    f_1 = x = 1 | 2, so class 1 has the more evidence on the left, class 0 on the right."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([10.0, 1.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-9.5, 0.0]))
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("method", BACKPROP)
def test_evidence_wins_where_it_is_strongest(method):
    x = torch.ones(1, 1, 4, 8)
    x[..., 4:] = 2.0
    model = GainNet().eval()
    raw = clear_native.Clear(model, method, class_scale="raw", channel_reduce="sum")(x)
    ev = clear_native.Clear(model, method, class_scale="evidence", channel_reduce="sum")(x)
    # As projected, the high-gain class 0 takes every pixel; on one scale, each half goes
    # to the class with the larger response there.
    assert (raw.dominant_class == 0).all()
    assert (ev.dominant_class[..., :4] == 1).all() and (ev.dominant_class[..., 4:] == 0).all()


def test_defaults_and_errors():
    model = GapNet().eval()
    assert clear_native.Clear(model, "deconvnet").class_scale == "raw"  # the paper's method exactly
    assert clear_native.Clear(model, "guided").class_scale == "evidence"
    assert clear_native.Clear(model, "gradient").class_scale == "evidence"
    assert clear_native.Clear(model, "cam").class_scale is None
    with pytest.raises(ValueError, match="class_scale must be one of"):
        clear_native.Clear(model, "guided", class_scale="max")
    for method in ("cam", "lrp"):
        with pytest.raises(ValueError, match="class_scale= applies to the back-projection methods"):
            clear_native.Clear(model, method, class_scale="evidence")


def test_scale_to_evidence_edge_cases():
    maps = torch.tensor([[[[1.0, 3.0], [-2.0, float("nan")]], [[-1.0, -2.0], [0.0, 0.0]],
                          [[0.5, 0.5], [0.0, 0.0]]]])  # (1, 3, 2, 2)
    mass = torch.tensor([[8.0, 5.0, 0.0]])
    got = scale_to_evidence(maps, mass)
    torch.testing.assert_close(got[0, 0], maps[0, 0] * 2, equal_nan=True)  # NaN ignored in the mass
    torch.testing.assert_close(got[0, 1], maps[0, 1])                       # no positive pixel: as is
    torch.testing.assert_close(got[0, 2], torch.zeros(2, 2))                # no evidence: zero
    assert scale_to_evidence(torch.empty(0, 2, 3, 3), torch.empty(0, 2)).shape == (0, 2, 3, 3)
