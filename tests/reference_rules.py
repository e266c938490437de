"""The ReLU backward rules of the slow reference loops in test_explain.py, from tensor hooks.

Written here, independently of clear_native (not its _relu_rules): inside
``with HookedReLU(rule):`` every ReLU call -- F.relu (so nn.ReLU, in place or not),
torch.relu, torch.relu_, Tensor.relu, Tensor.relu_ -- returns ``hooked_relu(x, rule)``;
every other call runs as it would without the mode. No module global is patched.

The in-place forms return the new, hooked tensor too and leave their input as it was: the
test models only use what a ReLU returns.
"""
import torch
import torch.nn.functional as F

RELUS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)


def hooked_relu(x, rule):
    """An out-of-place ReLU whose backward follows ``rule``, built from tensor hooks."""
    y = torch.relu(x)
    if rule == "gradient" or not y.requires_grad:
        return y
    if rule == "deconvnet":
        y = x + (y - x).detach()  # forward relu(x), backward identity ...
    y.register_hook(lambda g: g.clamp(min=0))  # ... then rectified (guided: and masked)
    return y


class HookedReLU(torch.overrides.TorchFunctionMode):
    """``with HookedReLU(rule):`` the ReLUs of the forward passes inside take ``rule``'s
    backward (deconvnet, guided or gradient)."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # torch takes this mode off its stack while it runs: the calls in here run plain
        if func in RELUS:
            return hooked_relu(args[0] if args else kwargs["input"], self.rule)
        return func(*args, **(kwargs or {}))
