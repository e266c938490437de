"""Dominance operator: native vs plain-PyTorch reference, and torch.sum as the
read-bandwidth yardstick over the same tensor, in the same run.

    pytest benchmarks/test_bench_dominance.py --benchmark-only
    python benchmarks/report.py -k dominance      # the README table
"""
import functools

import pytest
import torch

import clear_native
from clear_native import reference
from conftest import peak_memory_mib, sync

# The shapes: (N, C, H, W), float32.
CASES = [(16, 120, 224, 224), (8, 1000, 112, 112)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_inputs(shape, device="cpu"):
    torch.manual_seed(0)
    return (torch.randn(shape, device=device),)


def run_native(x):
    return clear_native.dominance(x)


def run_reference(x):
    return reference.dominance(x)


def run_sum(x):
    return x.sum()


IMPLS = {"native": run_native, "reference": run_reference, "torch_sum": run_sum}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_dominance(benchmark, shape, impl, device):
    (x,) = make_inputs(shape, device)
    fn = IMPLS[impl]

    def run():
        out = fn(x)
        sync(device)
        return out

    benchmark.group = f"dominance {'x'.join(map(str, shape))} {device}"
    benchmark.extra_info.update(
        op="dominance", impl=impl, shape=list(shape), device=device, dtype="float32",
        bytes_read=x.numel() * x.element_size(),
        peak_memory_mib=peak_memory_mib(functools.partial(make_inputs, shape, device), fn, device))
    rounds = 2 if impl == "reference" else 10
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
