"""Shared helpers of the benchmarks: device sync and peak memory of one call."""
import multiprocessing as mp
import resource

import pytest
import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, times: list):
    """``fn``, appending its wall time (device synchronised) to ``times``."""
    import time

    def run(*args):
        t0 = time.perf_counter()
        out = fn(*args)
        sync(device)
        times.append(time.perf_counter() - t0)
        return out
    return run


def _peak_rss_kib() -> int:
    """High-water mark of this process's resident set (KiB).

    /proc's VmHWM belongs to the current address space, so it starts afresh in
    a spawned child; ru_maxrss would not: Linux carries the parent's resident
    size at fork over the child's exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(make_inputs, fn, conn):
    inputs = make_inputs()
    base = _peak_rss_kib()
    fn(*inputs)
    peak = _peak_rss_kib()
    conn.send(max(peak - base, 0) / 1024.0)
    conn.close()


def peak_memory_mib(make_inputs, fn, device: str = "cpu") -> float:
    """Extra peak memory (MiB) of one call ``fn(*make_inputs())``.

    ``make_inputs`` and ``fn`` must be module-level functions (or partials of
    them). CUDA: ``torch.cuda.max_memory_allocated`` around the call. CPU: the
    growth of the peak resident set of a fresh (spawned) process, from after
    its inputs are made to after its first call -- the memory the call needs
    beyond its inputs (plus a few MiB of one-time set-up such as thread pools).
    """
    if device == "cuda":
        inputs = make_inputs()
        fn(*inputs)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(*inputs)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(make_inputs, fn, child))
    proc.start()
    value = parent.recv()
    proc.join()
    return value


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
