"""End-to-end throughput of batch explanation (``clear-native explain``) on this CPU,
and the share of the time spent outside the model and the CLEAR kernels (reading,
collation, writing). Target: at most 25 %.

    pytest benchmarks/test_bench_batch.py --benchmark-only
    python benchmarks/test_bench_batch.py [--images 1024] [--batch-size 64] [--method deconvnet]

Uses the built-in MNIST model when its weights are shipped, else the same AllCNN
architecture with random weights (same work), on random 28x28 uint8 digits; ``--images 0``
runs the built-in MNIST sample when it is shipped.
The phase times come from the run's manifest (``timings``): ``data_s`` (waiting
for the DataLoader), ``explain_s`` (model + back-projection + dominance),
``write_s`` (Zarr chunks, per-image statistics, commit records).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent


def mnist_like_model() -> nn.Module:
    """ALL-CNN-like MNIST classifier (conv/ReLU/max-pool, 10-kernel last conv, GAP)."""
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(p[0].numel(), 1)) ** 0.5)
    return m.eval()


def _have_builtin() -> tuple[bool, bool]:
    """(shipped MNIST weights, shipped MNIST sample)."""
    try:
        from clear_native import data, models
    except ImportError:
        return False, False
    return "mnist" in models.available_models(), data.sample_path("mnist").is_file()


def inputs(folder: Path, images: int) -> tuple[str | None, str | None, str]:
    """(model spec, data spec, description): the built-in model / sample when shipped,
    else the built-in architecture with random weights / random 28x28 digits."""
    have_model, have_sample = _have_builtin()
    try:
        from clear_native.models import build_model  # noqa: F401
        model = None if have_model else "clear_native.models:build_model"
        what = "built-in MNIST model" if have_model else "built-in AllCNN with random weights"
    except ImportError:
        model, what = "test_bench_batch:mnist_like_model", "ALL-CNN-like stand-in"
    if have_sample and images <= 0:
        return model, None, what + " on the built-in MNIST sample"
    images = images or 1024
    rng = np.random.default_rng(0)
    path = folder / "digits.npz"
    np.savez(path, images=rng.integers(0, 256, (images, 28, 28), dtype=np.uint8),
             labels=rng.integers(0, 10, images))
    return model, str(path), what + f" on {images} random 28x28 digits"


def run_once(model, data, out: Path, batch_size=64, method="deconvnet", workers=0, store="dominant,response"):
    from clear_native import batch

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    opts = batch.BatchOptions(out=str(out), model=model, data=data, method=method, batch_size=batch_size,
                              workers=workers, store=tuple(store.split(",")), progress=False, overwrite=True)
    summary = batch.run(opts)
    return summary, json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("method", ["deconvnet", "cam"])
def test_batch_mnist(benchmark, tmp_path, method):
    model, data, what = inputs(tmp_path, 256)
    result = {}  # no warm-up round: the run explains one image before its loop

    def run():
        result["summary"], result["manifest"] = run_once(model, data, tmp_path / "out", method=method)

    benchmark.group = "batch explain, MNIST 28x28, CPU"
    benchmark.pedantic(run, rounds=1, warmup_rounds=0, iterations=1)
    t = result["manifest"]["timings"]
    benchmark.extra_info.update(
        what=what, method=method, images=result["summary"].images, images_per_s=t["images_per_s"],
        data_s=t["data_s"], explain_s=t["explain_s"], write_s=t["write_s"], wall_s=t["wall_s"],
        outside_explain_share=t["outside_explain_share"])
    assert t["outside_explain_share"] <= 0.25 or method == "cam"  # deconvnet: the target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--method", default="deconvnet")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--store", default="dominant,response")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data, what = inputs(tmp, a.images)
        run_once(model, data, tmp / "warm", batch_size=a.batch_size, method=a.method, workers=a.workers,
                 store=a.store)
        t0 = time.perf_counter()
        summary, manifest = run_once(model, data, tmp / "out", batch_size=a.batch_size, method=a.method,
                                     workers=a.workers, store=a.store)
        wall = time.perf_counter() - t0
    t = manifest["timings"]
    busy = t["data_s"] + t["explain_s"] + t["write_s"]
    print(f"{what}; method {a.method}, batch {a.batch_size}, workers {a.workers}, store {a.store}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"images {summary.images}  wall {wall:.2f} s  throughput {summary.images / wall:.1f} images/s "
          f"(end to end, incl. model load and set-up)")
    print(f"in the loop: data {t['data_s']:.3f} s  explain {t['explain_s']:.3f} s  write {t['write_s']:.3f} s  "
          f"-> outside explain {100 * (busy - t['explain_s']) / busy:.1f} %  "
          f"(loop {summary.images / busy:.1f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
