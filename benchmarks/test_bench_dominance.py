"""Dominance operator: native vs plain-PyTorch reference, and torch.sum as the
read-bandwidth yardstick over the same tensor, in the same run.

    pytest benchmarks/test_bench_dominance.py --benchmark-only
    python benchmarks/report.py            # the README table
"""
import pytest
import torch

import clear_native
from clear_native import reference
from conftest import peak_memory_mib, sync

# The shapes: (N, C, H, W), float32.
CASES = [(16, 120, 224, 224), (8, 1000, 112, 112)]
IMPLS = {
    "native": lambda x: clear_native.dominance(x),
    "reference": lambda x: reference.dominance(x),
    "torch_sum": lambda x: x.sum(),
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_dominance(benchmark, shape, impl, device):
    x = torch.randn(shape, device=device)
    fn = IMPLS[impl]

    def run():
        out = fn(x)
        sync(device)
        return out

    benchmark.group = f"dominance {'x'.join(map(str, shape))} {device}"
    benchmark.extra_info.update(
        op="dominance", impl=impl, shape=list(shape), device=device, dtype="float32",
        bytes_read=x.numel() * x.element_size(),
        peak_memory_mib=peak_memory_mib(run, device))
    rounds = 2 if impl == "reference" else 10
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
