"""The benchmarks' plain-PyTorch baselines (benchmarks/baselines.py) compute what they are
timed against, on small inputs: the speed-ups in docs/performance.md compare like with like. (The
benchmark files check the same on their own inputs; this runs with the test suite.)"""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clear_native
from clear_native import palettes, reference
from clear_native.render import compute_scale

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baselines  # noqa: E402


def test_dominance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 9, 11, generator=g)  # continuous values: no ties
    target = torch.tensor([0, 16, 5])
    want = reference.dominance(x, target)
    fields = baselines.FIELDS + baselines.TARGET_FIELDS
    assert baselines.matches_reference(baselines.dominance(x, target), want, fields) == []
    assert baselines.matches_reference(baselines.dominance(x, runner_up=False, weakest=False), want) == []
    assert baselines.matches_reference(clear_native.dominance(x, target), want, fields) == []
    broken = baselines.dominance(x, target)
    broken.weakest_response = broken.weakest_response + 1e-6  # the comparison sees a changed field
    assert baselines.matches_reference(broken, want, fields) == ["weakest_response"]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_project_dominance(mode):
    g = torch.Generator().manual_seed(1)
    feats = torch.relu(torch.randn(2, 12, 5, 6, generator=g))
    weight, bias = torch.randn(30, 12, generator=g), torch.randn(30, generator=g)
    want = reference.project_dominance(feats, weight, bias, size=(23, 17), mode=mode)
    got = baselines.project_dominance(feats, weight, bias, size=(23, 17), mode=mode)
    assert baselines.matches_reference(got, want, exact=False) == []
    maps = baselines.class_maps(feats, weight, bias)
    torch.testing.assert_close(maps, torch.einsum("nkhw,ck->nchw", feats, weight) + bias.view(1, -1, 1, 1))
    wt, flat = baselines.class_map_gemm_operands(feats, weight)
    torch.testing.assert_close(baselines.class_map_gemm(wt, flat).view(30, 2, 5, 6).transpose(0, 1),
                               maps - bias.view(1, -1, 1, 1))


def test_unpool_deconv():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 12, 12, generator=g)
    w = torch.randn(6, 5, 3, 3, generator=g)
    pooled, idx = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2, return_indices=True)
    grad = torch.randn(pooled.shape, generator=g)
    want = reference.unpool_deconv(grad, idx, w, (12, 12), padding=1, rule="deconvnet")
    torch.testing.assert_close(baselines.unpool_deconv(grad, idx, w, (12, 12), padding=1), want)


def test_render():
    g = torch.Generator().manual_seed(3)
    classes = torch.randint(-1, 10, (3, 20, 16), generator=g)
    responses = torch.rand(3, 20, 16, generator=g) * 4
    image = torch.rand(3, 3, 20, 16, generator=g)
    pal = palettes.get_palette(10)
    scale = compute_scale(responses)
    got = baselines.render(classes, responses, scale, pal, image, 0.5).int()
    want = reference.render(classes, responses, scale, pal, image, 0.5).int()
    assert (got - want).abs().max() <= 1 and (got != want).float().mean() < 0.01  # float order only
