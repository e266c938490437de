"""LRP CLEAR maps (clear_native.Clear(method="lrp")) against zennit's per-class loop, in the same run.

    pytest benchmarks/test_bench_lrp.py --benchmark-only

The shipped MNIST model (``clear_native.load_pretrained("mnist")``: ALL-CNN, conv / ReLU /
max-pool, 1x1 class conv, GAP), N=64 images of the shipped sample, all 10 classes +
dominance, the default configuration (``signal="logit"``, the standard LRP start; z^B at the
input layer with MNIST's domain [0, 1]): Clear in one call vs zennit's ``Gradient(model,
EpsilonPlusFlat(zero_params="bias", first_map=[ZBox(0, 1)]))`` once per class,
then ``clear_native.dominance`` of the stacked maps (skipped without zennit:
``pip install zennit``). Separate timings with peak memory, an interleaved pair (the two
ways alternate round by round, per-round ratios: robust on a shared host) and an untimed
equality check.
"""
import functools
import time

import pytest
import torch

import clear_native
from conftest import peak_memory_mib, sync

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
GROUP = "explain lrp signal=logit mnist 64x1x28x28 C=10 {device}"
BOX = (0.0, 1.0)  # MNIST's input domain: z^B's box


def make_mnist(device="cpu"):
    model = clear_native.load_pretrained("mnist", map_location=device)
    return model, clear_native.load_sample("mnist").tensors()[0][:64].to(device)


def run_clear_lrp(model, x):
    return clear_native.Clear(model, "lrp", signal="logit", input_bounds=BOX)(x)


def zennit_class_maps(model, x):
    """(N, 10, H, W): zennit's EpsilonPlusFlat maps with a ZBox input layer, one attribution
    per class (channel sum)."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat
    from zennit.rules import ZBox
    from zennit.types import Linear

    composite = EpsilonPlusFlat(zero_params="bias", canonizers=[SequentialMergeBatchNorm()],
                                first_map=[(Linear, ZBox(*BOX, zero_params="bias"))])
    maps = []
    with Gradient(model, composite) as attributor:
        for c in range(10):
            onehot = torch.nn.functional.one_hot(torch.full((x.shape[0],), c, device=x.device), 10)
            _, rel = attributor(x, lambda out: out * onehot.to(out))
            maps.append(rel.sum(1))
    return torch.stack(maps, 1)


def run_zennit_lrp(model, x):
    maps = zennit_class_maps(model, x)
    with torch.no_grad():
        target = model(x).argmax(1)
    return clear_native.dominance(maps, target)


IMPLS = {"clear_native": run_clear_lrp, "zennit_per_class": run_zennit_lrp}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_lrp_mnist(benchmark, impl, device):
    if impl == "zennit_per_class":
        pytest.importorskip("zennit")
    model, x = make_mnist(device)
    fn = IMPLS[impl]

    def run():
        out = fn(model, x)
        sync(device)
        return out

    benchmark.group = GROUP.format(device=device)
    benchmark.extra_info.update(
        op="explain", impl=impl, device=device, dtype="float32", shape=list(x.shape), method="lrp",
        signal="logit", classes=10,
        peak_memory_mib=peak_memory_mib(functools.partial(make_mnist, device), fn, device))
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("device", DEVICES)
def test_lrp_mnist_interleaved(benchmark, device):
    """Clear then zennit in each round; extra_info holds the per-round times and the median ratio."""
    pytest.importorskip("zennit")
    model, x = make_mnist(device)
    times = {name: [] for name in IMPLS}

    def pair():
        for name, fn in IMPLS.items():
            t0 = time.perf_counter()
            fn(model, x)
            sync(device)
            times[name].append(time.perf_counter() - t0)

    benchmark.group = GROUP.format(device=device) + " interleaved"
    benchmark.pedantic(pair, rounds=7, warmup_rounds=1, iterations=1)
    ours, theirs = times["clear_native"][1:], times["zennit_per_class"][1:]  # first: warm-up
    ratios = sorted(t / o for o, t in zip(ours, theirs))
    benchmark.extra_info.update(op="explain", impl="interleaved", device=device, method="lrp",
                                clear_native_s=ours, zennit_per_class_s=theirs,
                                median_speedup=ratios[len(ratios) // 2])


@pytest.mark.parametrize("device", DEVICES)
def test_lrp_mnist_agrees_with_zennit(device):
    """Not timed: the same class maps and dominance as the zennit loop."""
    pytest.importorskip("zennit")
    model, x = make_mnist(device)
    ours = clear_native.Clear(model, "lrp", signal="logit", input_bounds=BOX)(x, keep_class_maps=True)
    theirs = zennit_class_maps(model, x)
    torch.testing.assert_close(ours.class_maps, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())
    ref = run_zennit_lrp(model, x)
    torch.testing.assert_close(ours.dominant_response, ref.dominant_response, rtol=1e-4, atol=1e-6)
    assert (ours.dominant_class != ref.dominant_class).float().mean() < 1e-3
