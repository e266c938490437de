"""unpool_deconv (one deconvnet layer in one pass) vs the plain-PyTorch way
(clear_native.reference.unpool_deconv: scatter to the switches, ReLU rule, the
library's transposed convolution), same inputs, same run.

    pytest benchmarks/test_bench_deconv.py --benchmark-only
    python benchmarks/report.py -k unpool_deconv      # the table of docs/performance.md

Cases: the two conv -> ReLU -> max-pool blocks of the MNIST benchmark model
(benchmarks/test_bench_explain.py), 16 and 64 images, the deconvnet rule; the
signal at the pool output is Gaussian (half of it survives the rule; in the
explainer's passes over that model 57% does).
"""
import functools

import pytest
import torch
import torch.nn.functional as F

import baselines
from clear_native import reference
from clear_native.deconv import unpool_deconv
from conftest import peak_memory_mib, sync

# (N, C_in, C, H): conv C_in -> C, 3x3, padding 1, at H x H, then 2x2 max-pool.
CASES = [(16, 32, 32, 28), (16, 64, 64, 14), (64, 32, 32, 28), (64, 64, 64, 14)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_inputs(case, device="cpu"):
    n, cin, c, h = case
    torch.manual_seed(0)
    x = torch.randn(n, cin, h, h, device=device)
    w = torch.randn(c, cin, 3, 3, device=device) / (3 * cin ** 0.5)
    pooled, idx = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2, return_indices=True)
    g = torch.randn_like(pooled)
    return g, idx, w, (h, h)


def run_native(g, idx, w, size):
    return unpool_deconv(g, idx, w, size, padding=1, rule="deconvnet")


def run_reference(g, idx, w, size):
    return reference.unpool_deconv(g, idx, w, size, padding=1, rule="deconvnet")


def run_plain(g, idx, w, size):
    return baselines.unpool_deconv(g, idx, w, size, padding=1)


IMPLS = {"native": run_native, "reference": run_reference, "plain": run_plain}


@pytest.mark.parametrize("case", CASES[:2], ids=lambda s: "x".join(map(str, s)))
def test_plain_baseline_matches_reference(case):
    """The plain baseline (max_unpool2d + conv_transpose2d) computes the benchmarked result."""
    inputs = make_inputs(case)
    torch.testing.assert_close(run_plain(*inputs), run_reference(*inputs), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run_native(*inputs), run_reference(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda s: "x".join(map(str, s)))
def test_unpool_deconv(benchmark, case, impl, device):
    inputs = make_inputs(case, device)
    fn = IMPLS[impl]

    def run():
        out = fn(*inputs)
        sync(device)
        return out

    n, cin, c, h = case
    benchmark.group = f"unpool_deconv N={n} {c}->{cin} {h // 2}->{h} {device}"
    benchmark.extra_info.update(
        op="unpool_deconv", impl=impl, shape=list(inputs[0].shape), device=device, dtype="float32",
        peak_memory_mib=peak_memory_mib(functools.partial(make_inputs, case, device), fn, device))
    benchmark.pedantic(run, rounds=15, warmup_rounds=2, iterations=1)
