"""The run itself (:func:`run`): load, probe, open OUT, resume, then the loop that reads a
chunk, explains it and hands it to the writer thread, and the end on rank 0."""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from clear_native.batch.chunk import assemble
from clear_native.batch.dist import Dist
from clear_native.batch.explainer import Explainer, load, probe
from clear_native.batch.finalize import Shapes, finalize
from clear_native.batch.options import FORMAT, BatchOptions, BatchSummary, check_options
from clear_native.batch.runstore import ChunkWriter, RunStore
from clear_native.io import BatchError, Collate, DataSource, LoadedModel
from clear_native.store import Files, write_error

logger = logging.getLogger(__name__)


def run(options: BatchOptions, *, explainer: Callable[[torch.nn.Module, str], Callable] | None = None,
        model: LoadedModel | None = None, data: DataSource | None = None, files: Files | None = None,
        renderer: Callable | None = None) -> BatchSummary:
    """Explains every image of ``options.data`` and writes the results under ``options.out``.

    Args:
        options: the run's arguments (see :class:`BatchOptions`).
        explainer: ``explainer(model, method)`` -> a callable
            ``(images (N, ch, H, W), target, classes)`` returning an object with the
            fields of :class:`clear_native.ClearMaps` (default:
            ``clear_native.Clear(model, method, signal=options.signal)``). A custom hook
            is still called with ``(model, method)`` only: it chooses its own signal,
            and when the object it returns has a ``signal`` attribute (as ``Clear``
            has), that must equal the run's (``options.resolved_signal()``, which the
            manifest records), else :class:`BatchError`.
        model, data: already loaded inputs (default: from ``options.model`` / ``.data``).
        files: how the run writes under OUT (default :class:`clear_native.store.Files`;
            a subclass can fail any write, as the fault-injection tests do).
        renderer: ``renderer(maps, num_classes=C)`` -> (n, H, W, 3) pictures for
            ``--store png`` (default :func:`clear_native.render.render`).

    Returns:
        A :class:`BatchSummary` (``exit_code`` is 3 when some images were skipped).

    Raises:
        BatchError: bad arguments or inputs, with a message for the user.
    """
    t_start = time.perf_counter()
    check_options(options)
    dist = Dist(options.device)
    with contextlib.ExitStack() as stack:  # unwinds: writer thread, lock on OUT, process group
        stack.callback(dist.close)
        ex = load(options, dist, explainer, model, data)
        return _run(options, dist, ex, RunStore(Path(options.out), files), renderer, t_start, stack)


def _chunk_ranges(n: int, b: int) -> list[tuple[int, int]]:
    return [(s, min(s + b, n)) for s in range(0, n, b)]


def _run(o: BatchOptions, dist: Dist, ex: Explainer, rs: RunStore, renderer: Callable | None, t_start: float,
         stack: contextlib.ExitStack) -> BatchSummary:
    shapes = Shapes(*probe(ex, o.classes))
    n = len(ex.source)
    identity = {"format": FORMAT, "model": ex.loaded.fingerprint, "data": ex.source.fingerprint,
                "images": n, "image_shape": list(shapes.image), **o.identity()}
    specs = o.array_specs(n, shapes.maps, shapes.num_classes, shapes.image)
    # rank 0 locks OUT for the whole run; the other ranks write only once it holds it
    resumed = dist.on_rank0(lambda: rs.create(o, identity, specs, stack), rs.out)
    rs.attach()
    chunks = _chunk_ranges(n, o.batch_size)
    mine = [k for k in range(len(chunks)) if k % dist.world == dist.rank]
    todo, redone = rs.resume(chunks, mine)
    if resumed:
        logger.info("resuming %s (rank %d): %d of %d chunks already committed and verified", rs.out, dist.rank,
                    len(mine) - len(todo), len(mine))
    png = None
    if "png" in o.store:
        if renderer is None:
            from clear_native.render import render as renderer
        (rs.out / "png").mkdir(exist_ok=True)
        png = (rs.out / "png", renderer)
    local = _loop(o, dist, ex, rs, chunks, todo, shapes, png, stack) | {"redone": redone}
    gathered = dist.all_gather(local)
    summary = None
    if dist.rank == 0:
        try:
            summary = finalize(rs, o, ex, identity, shapes, chunks, gathered, dist.world, t_start)
        except OSError as e:
            raise BatchError(write_error(rs.out, e)) from e
    return dist.broadcast(summary)


def _loop(o: BatchOptions, dist: Dist, ex: Explainer, rs: RunStore, chunks: list[tuple[int, int]],
          todo: list[int], shapes: Shapes, png, stack: contextlib.ExitStack) -> dict:
    """Explains the chunks ``todo``: reads a chunk, explains it, assembles its results and
    hands them to the writer thread while the next one is explained. Returns this rank's
    counts and timings."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        ex.items, batch_sampler=[list(range(*chunks[k])) for k in todo], collate_fn=Collate(shapes.image),
        num_workers=o.workers, pin_memory=ex.device.type == "cuda", persistent_workers=False)
    bar = tqdm(total=sum(chunks[k][1] - chunks[k][0] for k in todo), unit="img", dynamic_ncols=True,
               disable=not o.progress or dist.rank != 0,
               desc=f"explain (rank 0/{dist.world})" if dist.active else "explain")
    writer = ChunkWriter(rs, stack)
    t = {"data_s": 0.0, "explain_s": 0.0, "write_s": 0.0}
    images_run = errors_run = 0
    it = iter(loader)
    for k in todo:
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        maps = None
        if batch["images"] is not None:
            maps = ex.maps(batch["images"].to(ex.device, ex.dtype, non_blocking=True))
            if ex.device.type == "cuda":
                torch.cuda.synchronize(ex.device)
        t2 = time.perf_counter()
        blocks, record = assemble(k, chunks[k], batch, maps, rs.arrays, ex.source.keys, shapes.num_classes, png)
        record["timings"] = {"data_s": t1 - t0, "explain_s": t2 - t1}
        writer.submit(k, *chunks[k], blocks, record, time.perf_counter() - t2)
        t["data_s"] += t1 - t0
        t["explain_s"] += t2 - t1
        t["write_s"] += time.perf_counter() - t2
        images_run += chunks[k][1] - chunks[k][0]
        errors_run += len(record["errors"])
        bar.update(chunks[k][1] - chunks[k][0])
        bar.set_postfix(errors=errors_run, refresh=False)
    t5 = time.perf_counter()
    writer.close()
    t["write_s"] += time.perf_counter() - t5
    bar.close()
    del it, loader
    return {"chunks_run": len(todo), "images_run": images_run, **t, "writer_busy_s": writer.busy_s}
