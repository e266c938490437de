"""Shared helpers of the benchmarks: device sync and peak memory of one call."""
import multiprocessing as mp
import resource

import pytest
import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _child(fn, conn):
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Touch the baseline pages so the peak below counts only what fn adds.
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn.send((peak - base) / 1024.0)
    conn.close()


def peak_memory_mib(fn, device: str = "cpu") -> float:
    """Extra peak memory (MiB) of one call of ``fn``.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the growth of the peak
    resident set of a forked process that makes just that call (inputs already
    exist before the fork, so they are not counted).
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, child))
    proc.start()
    value = parent.recv()
    proc.join()
    return value


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            if "cuda" in item.keywords or "[cuda" in item.nodeid or "-cuda" in item.nodeid:
                item.add_marker(skip)
