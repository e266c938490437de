"""project_dominance (fused projection + upsample + dominance) vs the plain-PyTorch
reference (einsum, F.interpolate, reference.dominance), in the same run, with
trained-looking (ReLU, spatially smooth) and random features.

    python benchmarks/report.py -k project
"""
import functools

import pytest
import torch
import torch.nn.functional as F

import clear_native
from clear_native import reference
from conftest import peak_memory_mib, sync

# (N, K, C, h, H): the shapes.
CASES = {"imagenet_8x1280x1000_7to224": (8, 1280, 1000, 7, 224),
         "mnist_64x64x10_7to28": (64, 64, 10, 7, 28)}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_inputs(case, kind, device="cpu"):
    n, k, c, h, _ = CASES[case]
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        feats = torch.randn(n, k, h, h, generator=g)
    else:  # trained-looking: non-negative, spatially smooth activations
        feats = torch.relu(3 * F.avg_pool2d(torch.randn(n, k, h + 4, h + 4, generator=g), 5, 1))
    weight = torch.randn(c, k, generator=g) / k ** 0.5
    bias = 0.1 * torch.randn(c, generator=g)
    return feats.to(device), weight.to(device), bias.to(device), CASES[case][-1]


def run_native(feats, weight, bias, size):
    return clear_native.project_dominance(feats, weight, bias, size=(size, size))


def run_reference(feats, weight, bias, size):
    return reference.project_dominance(feats, weight, bias, size=(size, size))


IMPLS = {"native": run_native, "reference": run_reference}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("kind", ["trained", "random"])
@pytest.mark.parametrize("case", list(CASES))
def test_project_dominance(benchmark, case, kind, impl, device):
    inputs = make_inputs(case, kind, device)
    fn = IMPLS[impl]

    def run():
        out = fn(*inputs)
        sync(device)
        return out

    benchmark.group = f"project_dominance {case} {kind} {device}"
    benchmark.extra_info.update(
        op="project_dominance", impl=impl, case=case, kind=kind, device=device,
        peak_memory_mib=peak_memory_mib(functools.partial(make_inputs, case, kind, device), fn, device))
    slow = impl == "reference" and case.startswith("imagenet")
    benchmark.pedantic(run, rounds=1 if slow else 5, warmup_rounds=0 if slow else 1, iterations=1)
