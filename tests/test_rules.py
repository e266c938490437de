"""The rule registry: the paper's rules as objects, and a new rule as one small class."""
import pytest
import torch
import torch.nn as nn

import clear_native
from clear_native import rules
from clear_native.deconv import kernel_rules, unpool_deconv
from clear_native.explain import methods

pytestmark = pytest.mark.usefixtures("raw_class_scale")  # slow loops: the maps as projected


class PoolNet(nn.Module):
    """conv / ReLU / max-pool twice, GAP + linear; the activation is a module attribute
    so that the reference below can swap it."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.act, self.pool = act, nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        f = self.act(self.c2(self.pool(self.act(self.c1(x)))))
        return self.fc(f.mean((2, 3)))


class StraightThroughReLU(nn.Module):
    """relu(x) forward, the identity backward: the toy rule written the long way."""

    def forward(self, x):
        return x + (torch.relu(x) - x).detach()


class Passthrough(rules.Rule):
    """Toy rule: every ReLU passes the signal unchanged (the linearised network)."""

    name = "toy_passthrough"

    def relu(self, grad, mask):
        return grad


def test_paper_rules_are_registered_with_their_kernel_ids():
    assert rules.names()[:3] == ("deconvnet", "guided", "gradient")
    assert methods()[:4] == ("deconvnet", "guided", "gradient", "cam")
    assert kernel_rules() == {"deconvnet": 1, "guided": 2, "gradient": 0}
    assert not rules.get("deconvnet").reads_activation and rules.get("guided").reads_activation
    assert rules.get("gradient").plain
    assert rules.get("deconvnet").default_channel_reduce == "max_abs"
    with pytest.raises(ValueError, match="rule must be one of .*'deconvnet'.*got 'nope'"):
        rules.get("nope")


def test_a_new_rule_is_one_class():
    """Registered, the toy rule is a method of Clear (plain autograd: no kernel for it);
    its maps equal a model whose ReLUs are straight-through, class by class."""
    torch.manual_seed(0)
    model = PoolNet(nn.ReLU()).eval()
    reference = PoolNet(StraightThroughReLU()).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 12, 12)
    with rules.registered(Passthrough):
        assert "toy_passthrough" in methods()
        explainer = clear_native.Clear(model, "toy_passthrough", signal="logit", channel_reduce="sum",
                                       class_chunk=1)
        got = explainer(x, keep_class_maps=True)
        assert explainer.last_routes.fast == []  # no fused block: the kernel has no such rule
        response = clear_native.Clear(model, "toy_passthrough")(x)  # the default signal runs too
        assert response.signal == "response"
    assert "toy_passthrough" not in methods()
    with pytest.raises(ValueError, match="method must be one of"):
        clear_native.Clear(model, "toy_passthrough")
    want = []
    for c in range(4):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(reference(xr)[:, c].sum(), xr)
        want.append(g.sum(1))
    torch.testing.assert_close(got.class_maps, torch.stack(want, 1))
    # and it differs from the paper's rules on this model
    deconv = clear_native.Clear(model, "deconvnet", signal="logit", channel_reduce="sum")(x, keep_class_maps=True)
    assert not torch.allclose(got.class_maps, deconv.class_maps)


def test_registry_guards():
    class Named(rules.Rule):
        name = "cam"

    with pytest.raises(ValueError, match="taken"):
        rules.register(Named)

    class OtherGuided(rules.Guided):  # a changed backward: the kernel's guided rule no longer applies
        name = "toy_guided"

        def relu(self, grad, mask):
            return torch.where(mask, grad.abs(), 0)

    with rules.registered(OtherGuided) as rule:
        assert rule.kernel_id is None and "toy_guided" not in kernel_rules()
        with pytest.raises(ValueError, match="unpool_deconv: rule must be one of"):
            unpool_deconv(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.long),
                          torch.zeros(1, 1, 1, 1), (2, 2), rule="toy_guided")
    with pytest.raises(TypeError, match="Rule subclass"):
        rules.register(int)
