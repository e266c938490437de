"""Render operator: the fused native CLEAR map renderer vs the plain-PyTorch
reference composition (clear_native.reference.render), same inputs, same run.

    pytest benchmarks/test_bench_render.py --benchmark-only
    python benchmarks/report.py -k render      # the table of docs/performance.md
"""
import functools

import pytest
import torch

import baselines
import clear_native
from clear_native import palettes, reference
from clear_native.render import compute_scale
from conftest import peak_memory_mib, sync

# The case: N=64 maps of 224x224, 10 classes, overlaid on a float32 RGB image.
CASES = [(64, 10, 224, 224)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


class Maps:
    def __init__(self, classes, responses, num_classes):
        self.dominant_class, self.dominant_response, self.num_classes = classes, responses, num_classes


def make_inputs(case, device="cpu"):
    n, c, h, w = case
    torch.manual_seed(0)
    classes = torch.randint(-1, c, (n, h, w), device=device)
    responses = torch.rand(n, h, w, device=device) * 4
    image = torch.rand(n, 3, h, w, device=device)
    return Maps(classes, responses, c), image


def run_native(maps, image):
    return clear_native.render(maps, image, overlay=0.5)


def run_reference(maps, image):
    pal = palettes.get_palette(maps.num_classes).to(image.device)
    scale = compute_scale(maps.dominant_response)
    return reference.render(maps.dominant_class, maps.dominant_response, scale, pal, image, 0.5)


def run_plain(maps, image):
    pal = palettes.get_palette(maps.num_classes).to(image.device)
    return baselines.render(maps.dominant_class, maps.dominant_response, compute_scale(maps.dominant_response),
                            pal, image, 0.5)


IMPLS = {"native": run_native, "reference": run_reference, "plain": run_plain}


def test_plain_baseline_matches_reference():
    """The plain baseline renders the reference's picture (to one grey level: another
    order of float operations)."""
    inputs = make_inputs((4, 10, 64, 48))
    got, want = run_plain(*inputs).int(), run_reference(*inputs).int()
    assert (got - want).abs().max() <= 1 and (got != want).float().mean() < 0.01


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda s: "x".join(map(str, s)))
def test_render(benchmark, case, impl, device):
    maps, image = make_inputs(case, device)
    fn = IMPLS[impl]

    def run():
        out = fn(maps, image)
        sync(device)
        return out

    n, c, h, w = case
    benchmark.group = f"render {'x'.join(map(str, case))} {device}"
    benchmark.extra_info.update(
        op="render", impl=impl, shape=[n, h, w], num_classes=c, device=device, dtype="float32",
        image="float32 rgb", overlay=0.5,
        peak_memory_mib=peak_memory_mib(functools.partial(make_inputs, case, device), fn, device))
    rounds = 3 if impl == "reference" else 10
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
