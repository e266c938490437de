"""Dominance operator: native vs the plain-PyTorch reference (clear_native.reference)
and the fastest plain-PyTorch formulation (baselines.dominance: x.topk(2, 1), x.min(1),
x.max(1)), with torch.sum over the same tensor as the read-bandwidth yardstick, in the
same run; torch.sum is also timed right before every native round (interleaved), for a
per-round bandwidth fraction that survives the machine's drift.

    pytest benchmarks/test_bench_dominance.py --benchmark-only
    pytest benchmarks/test_bench_dominance.py -k matches   # the untimed equality checks
    python benchmarks/report.py -k dominance               # the table of docs/performance.md
"""
import functools

import pytest
import torch

import baselines
import clear_native
from clear_native import reference
from conftest import peak_memory_mib, timed

# The shapes: (N, C, H, W), float32.
CASES = [(16, 120, 224, 224), (8, 1000, 112, 112)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# "all": every field; "dominant": runner_up=False, weakest=False.
FIELDS = {"all": {}, "dominant": {"runner_up": False, "weakest": False}}


def make_inputs(shape, device="cpu"):
    torch.manual_seed(0)
    return (torch.randn(shape, device=device),)


def run_native(x, fields="all"):
    return clear_native.dominance(x, **FIELDS[fields])


def run_plain(x, fields="all"):
    return baselines.dominance(x, **FIELDS[fields])


def run_reference(x, fields="all"):
    return reference.dominance(x)  # every field; it has no cheaper mode


def run_sum(x, fields="all"):
    return x.sum()


IMPLS = {"native": run_native, "plain": run_plain, "reference": run_reference, "torch_sum": run_sum}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("fields", list(FIELDS))
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_dominance(benchmark, shape, fields, impl, device):
    if impl == "reference" and fields != "all":
        pytest.skip("the reference computes every field: timed in the 'all' group")
    (x,) = make_inputs(shape, device)
    fn = functools.partial(IMPLS[impl], fields=fields)
    own, yardstick = [], []
    run = timed(fn, device, own)

    def setup():  # untimed by pytest-benchmark: torch.sum right before each native round
        timed(run_sum, device, yardstick)(x)
        return (x,), {}

    group = f"dominance {'x'.join(map(str, shape))} {device}"
    benchmark.group = group if fields == "all" else f"{group} dominant-only"
    benchmark.extra_info.update(
        op="dominance", impl=impl, shape=list(shape), device=device, dtype="float32", fields=fields,
        bytes_read=x.numel() * x.element_size(),
        peak_memory_mib=peak_memory_mib(functools.partial(make_inputs, shape, device), fn, device))
    # native and torch.sum take tens of milliseconds: 20 rounds each, so that their
    # separate medians average over the machine's drift (the per-round ratios need not).
    rounds = 2 if impl == "reference" else 20 if impl in ("native", "torch_sum") else 10
    if impl == "native":
        benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
        # Per round: torch.sum's time over native's (the warm-up round dropped).
        benchmark.extra_info.update(yardstick="torch_sum", yardstick_s=yardstick[-rounds:],
                                    native_s=own[-rounds:])
    else:
        benchmark.pedantic(run, args=(x,), rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_plain_baseline_matches_reference(shape):
    """The plain-PyTorch baseline computes the reference's result on the benchmark
    inputs (the first two images; with and without a target), bit for bit."""
    (x,) = make_inputs(shape)
    x = x[:2]
    target = torch.tensor([0, shape[1] - 1])
    want = reference.dominance(x, target)
    assert baselines.matches_reference(baselines.dominance(x, target), want,
                                       baselines.FIELDS + baselines.TARGET_FIELDS) == []
    assert baselines.matches_reference(baselines.dominance(x, runner_up=False, weakest=False), want) == []
    got = clear_native.dominance(x, target)
    assert baselines.matches_reference(got, want, baselines.FIELDS + baselines.TARGET_FIELDS) == []
