"""Explainer (clear_native.Clear) against the per-class ways, in the same run.

    pytest benchmarks/test_bench_explain.py --benchmark-only
    python benchmarks/report.py -k explain      # the table of docs/performance.md

* MNIST-sized ALL-CNN-like model (1x28x28, 10 classes, N=64): ``Clear(method="deconvnet")``
  for all classes + dominance, vs Captum's ``Deconvolution`` called once per class +
  ``reference.dominance`` (skipped without captum: ``pip install captum``), for both
  signals: the default class response (Captum attributing, per class, the objective
  ``sum(f * s_c)`` whose gradient at the feature layer is the response signal ``s_c``:
  the same maps) and the logit (Captum attributing the class logit).
* ResNet-18-sized GAP + linear network (3x224x224, 1000 classes, random weights, N=2):
  ``Clear(method="cam")`` vs the model's forward pass alone and vs the plain-PyTorch way
  (forward + ``reference.project_dominance`` over the 1000 classes).
"""
import functools
import time

import pytest
import torch
import torch.nn as nn

import clear_native
from clear_native import reference
from conftest import peak_memory_mib, sync

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# -- models ------------------------------------------------------------------------------

class AllCnnMnist(nn.Module):
    """ALL-CNN-like: conv/ReLU/max-pool, C-kernel 1x1 last conv, global average pooling."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, classes, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class ResNet18(nn.Module):
    """Plain-torch ResNet-18 (torchvision layout), GAP + linear head."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layers(self.stem(x))), 1))


# -- inputs and implementations (module level: picklable for the peak-memory child) --------

def make_mnist(device="cpu"):
    torch.manual_seed(0)
    return AllCnnMnist().to(device).eval(), torch.randn(64, 1, 28, 28, device=device)


def make_resnet(device="cpu"):
    torch.manual_seed(0)
    return ResNet18().to(device).eval(), torch.randn(2, 3, 224, 224, device=device)


def run_clear_deconvnet(model, x):
    return clear_native.Clear(model, "deconvnet")(x)  # default: signal="response"


def run_clear_deconvnet_logit(model, x):
    return clear_native.Clear(model, "deconvnet", signal="logit")(x)


def run_captum_deconvnet(model, x):
    """The logit signal: Captum's Deconvolution once per class."""
    from captum.attr import Deconvolution

    deconv = Deconvolution(model)
    maps = [deconv.attribute(x, target=c).abs().amax(1) for c in range(10)]  # one backward per class; Clear's max_abs
    return reference.dominance(torch.stack(maps, 1), model(x).argmax(1))


class _ResponseObjective(nn.Module):
    """x -> sum(features(x) * s): its gradient at the feature layer is the signal s."""

    def __init__(self, features: nn.Module, signal: torch.Tensor):
        super().__init__()
        self.features, self.signal = features, signal

    def forward(self, x):
        return (self.features(x) * self.signal).flatten(1).sum(1, keepdim=True)


def run_captum_deconvnet_response(model, x):
    """The response signal, as a user would write it with Captum: the class maps z_L
    (C-kernel conv + GAP: M_c = z_L^c / (h w), g_c = e_c / (h w)) give each class's signal
    s_c = g_c relu(M_c); then Captum's Deconvolution once per class on sum(f * s_c)."""
    from captum.attr import Deconvolution

    with torch.no_grad():
        z = model.features(x)                                  # (N, C, h, w)
        hw = z.shape[2] * z.shape[3]
    maps = []
    for c in range(z.shape[1]):
        s = torch.zeros_like(z)
        s[:, c] = z[:, c].clamp(min=0) / (hw * hw)
        deconv = Deconvolution(_ResponseObjective(model.features, s))
        maps.append(deconv.attribute(x, target=0).abs().amax(1))  # deconvnet default: max_abs
    return reference.dominance(torch.stack(maps, 1), z.mean((2, 3)).argmax(1))


def run_clear_cam(model, x):
    return clear_native.Clear(model, "cam")(x)


def run_forward(model, x):
    with torch.no_grad():
        return model(x)


def run_reference_cam(model, x):
    feats = {}
    handle = model.avgpool.register_forward_hook(lambda m, i, o: feats.update(f=i[0]))
    try:
        with torch.no_grad():
            logits = model(x)
            return reference.project_dominance(feats["f"], model.fc.weight, model.fc.bias,
                                               size=x.shape[-2:], target=logits.argmax(1))
    finally:
        handle.remove()


MNIST_IMPLS = {"response": {"clear_native": run_clear_deconvnet, "captum_per_class": run_captum_deconvnet_response},
               "logit": {"clear_native": run_clear_deconvnet_logit, "captum_per_class": run_captum_deconvnet}}
RESNET_IMPLS = {"clear_native_cam": run_clear_cam, "forward_only": run_forward,
                "reference": run_reference_cam}


def _bench(benchmark, fn, make, device, group, impl, rounds, **info):
    model, x = make(device)

    def run():
        out = fn(model, x)
        sync(device)
        return out

    benchmark.group = group
    benchmark.extra_info.update(
        op="explain", impl=impl, device=device, dtype="float32", shape=list(x.shape), **info,
        peak_memory_mib=peak_memory_mib(functools.partial(make, device), fn, device))
    return benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)


SIGNALS = ["response", "logit"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["clear_native", "captum_per_class"])
@pytest.mark.parametrize("signal", SIGNALS)
def test_explain_mnist_deconvnet(benchmark, signal, impl, device):
    if impl == "captum_per_class":
        pytest.importorskip("captum")
    _bench(benchmark, MNIST_IMPLS[signal][impl], make_mnist, device,
           f"explain deconvnet signal={signal} mnist 64x1x28x28 C=10 {device}", impl, rounds=5,
           method="deconvnet", signal=signal, classes=10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_explain_mnist_deconvnet_interleaved(benchmark, signal, device):
    """The same comparison with the two implementations alternating round by round, so that
    a machine whose speed drifts (shared hosts) affects both alike: each round times Clear
    then the Captum loop; extra_info holds the per-round times and the median ratio."""
    pytest.importorskip("captum")
    model, x = make_mnist(device)
    times = {"clear_native": [], "captum_per_class": []}
    impls = MNIST_IMPLS[signal]

    def pair():
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn(model, x)
            sync(device)
            times[name].append(time.perf_counter() - t0)

    benchmark.group = f"explain deconvnet signal={signal} mnist 64x1x28x28 C=10 {device} interleaved"
    benchmark.pedantic(pair, rounds=7, warmup_rounds=1, iterations=1)
    ours, theirs = times["clear_native"][1:], times["captum_per_class"][1:]  # first: warm-up
    ratios = sorted(t / o for o, t in zip(ours, theirs))
    benchmark.extra_info.update(
        op="explain", impl="interleaved", device=device, signal=signal, clear_native_s=ours,
        captum_per_class_s=theirs,
        median_speedup=ratios[len(ratios) // 2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_mnist_deconvnet_agrees_with_captum(signal, device):
    """Not timed: Clear and the Captum loop give the same dominant classes."""
    pytest.importorskip("captum")
    model, x = make_mnist(device)
    ours = MNIST_IMPLS[signal]["clear_native"](model, x)
    theirs = MNIST_IMPLS[signal]["captum_per_class"](model, x)
    torch.testing.assert_close(ours.dominant_response, theirs.dominant_response, rtol=1e-4, atol=1e-6)
    assert (ours.dominant_class != theirs.dominant_class).float().mean() < 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(RESNET_IMPLS))
def test_explain_resnet18_cam(benchmark, impl, device):
    _bench(benchmark, RESNET_IMPLS[impl], make_resnet, device,
           f"explain cam resnet18 2x3x224x224 C=1000 {device}", impl,
           rounds=2 if impl == "reference" else 5, method="cam", classes=1000)


@pytest.mark.parametrize("device", DEVICES)
def test_resnet18_cam_agrees_with_reference(device):
    """Not timed: Clear's cam equals the reference projection."""
    model, x = make_resnet(device)
    ours, ref = run_clear_cam(model, x), run_reference_cam(model, x)
    torch.testing.assert_close(ours.dominant_response, ref.dominant_response)
    assert (ours.dominant_class != ref.dominant_class).float().mean() < 1e-3
