import pytest
import torch

import clear_native

HAS_CUDA = torch.cuda.is_available() and clear_native.build_info()["cuda"]
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of clear_native")

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models run fastest on one thread and do not fight other processes for cores, and
    in-process batch runs then round as their subprocesses (OMP_NUM_THREADS=1) do: oneDNN's
    convolutions may round differently with another thread count, and the resume / torchrun
    tests compare runs byte for byte."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def raw_class_scale(monkeypatch):
    """Every rule's maps as projected (``class_scale="raw"`` by default) for a module's
    tests (``pytestmark = pytest.mark.usefixtures("raw_class_scale")``): those modules
    check the back-projection itself against slow loops written without the evidence
    scale, which tests/test_class_scale.py checks on its own."""
    from clear_native import rules
    monkeypatch.setattr(rules.Rule, "default_class_scale", "raw")


# The CPU kernel bodies below the one this machine runs (clear_native picks the best
# the CPU has: avx512 > avx2 > default), each checked against it by the tests that
# take ``body`` from this list: the scalar body always, the AVX2 body on AVX-512 CPUs.
ACTIVE_CPU_BODY = clear_native.build_info()["cpu_capability"]
LOWER_CPU_BODIES = ["default"] + (["avx2"] if ACTIVE_CPU_BODY == "avx512" else [])


def run_with_baseline_cpu_build(code: str, body: str = "default") -> None:
    """Runs ``code`` in a fresh interpreter with a lower CPU kernel body forced
    (``body``: "default", the scalar one, or "avx2"); ``code`` may check it with
    ``build_info()['cpu_capability']``.

    It runs from the tests folder: from the repo root the source tree would shadow the
    installed package. The code must print 'ok' last.
    """
    import os
    import subprocess
    import sys

    env = dict(os.environ, CLEAR_NATIVE_CPU_CAPABILITY=body)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
