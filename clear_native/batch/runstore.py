"""A batch run's files under OUT as the run sees them (:class:`RunStore`): run.json and the
arrays when it starts, the committed chunks it resumes from, one commit record per chunk
(written by :class:`ChunkWriter`'s thread), and the table, errors and manifest at the end.
The guarantees (locking, atomic commits, checks on resume) are :mod:`clear_native.store`'s;
every write goes through a :class:`clear_native.store.Files`."""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clear_native import store
from clear_native.batch.options import BatchOptions
from clear_native.io import BatchError

logger = logging.getLogger(__name__)

# Test hook: seconds to sleep between writing a chunk's arrays and committing it.
_DELAY_ENV = "CLEAR_NATIVE_BATCH_TEST_DELAY"


class RunStore:
    """OUT of one run: ``arrays`` (name -> Zarr array, once :meth:`attach` opened them) and
    the reads and writes a run makes there, all writes through ``files``."""

    def __init__(self, out: Path, files: store.Files | None = None):
        self.out = Path(out)
        self.files = files or store.Files()
        self.delay = float(os.environ.get(_DELAY_ENV, "0") or 0)
        self.arrays: dict = {}
        self.metas: dict = {}

    def create(self, o: BatchOptions, identity: dict, specs: dict, stack: contextlib.ExitStack) -> bool:
        """Rank 0: checks OUT, locks it until ``stack`` unwinds, writes run.json (or checks
        it against ``identity``) and the arrays of ``specs``. Returns whether an earlier run
        is resumed."""
        lock, resumed = store.open_out(self.out, identity, o.overwrite, o.data, self.files)
        stack.callback(lock.release)
        store.ensure_arrays(self.out, specs, o.batch_size, identity, o.arguments(), self.files)
        return resumed

    def attach(self) -> None:
        """Opens the arrays that rank 0 created (every rank)."""
        import zarr

        group = zarr.open_group(store=self.files.zarr_store(self.out / "clear.zarr"), mode="r+")
        self.arrays = {name: group[name] for name in group.array_keys()}
        self.metas = {name: arr.metadata.to_dict() for name, arr in self.arrays.items()}

    def resume(self, chunks: list[tuple[int, int]], mine: list[int]) -> tuple[list[int], list[dict]]:
        """(the chunks of ``mine`` to explain, the committed ones redone as ``{"chunk",
        "reason"}``): every committed chunk is checked against its commit record (sizes and
        SHA-256 of its files); the records of those that fail are deleted."""
        checked = store.check_chunks(self.out, self.metas, chunks, mine)
        todo = [k for k in mine if checked[k][0] != "ok"]
        redone = [{"chunk": k, "reason": why} for k, (state, why) in checked.items() if state == "bad"]
        for r in redone:
            logger.info("%s: chunk %d is redone: %s", self.out, r["chunk"], r["reason"])
        try:
            store.drop_records(self.out, [r["chunk"] for r in redone])
        except OSError as e:
            raise BatchError(store.write_error(self.out, e)) from e
        return todo, redone

    def commit(self, k: int, start: int, stop: int, blocks: dict, record: dict, prep_s: float) -> None:
        """Writes chunk ``k``'s arrays, flushes them and records their sizes and SHA-256,
        then its sealed commit record (write-then-rename)."""
        t = time.perf_counter()
        for name, arr in self.arrays.items():
            self.files.write_chunk(arr, start, stop, blocks[name])
        record["files"] = self.files.commit_files(self.out, self.metas, k)
        if self.delay:
            time.sleep(self.delay)
        record["timings"]["write_s"] = prep_s + time.perf_counter() - t
        self.files.write_json(store.record_path(self.out, k), store.seal(record))

    def records(self, n_chunks: int) -> tuple[list[dict], list[dict], dict]:
        """(table rows, errors, summed timings) of every chunk's commit record; deletes the
        temporary files a killed run left."""
        rows, errors = [], []
        timings = {"data_s": 0.0, "explain_s": 0.0, "write_s": 0.0}
        for k in range(n_chunks):
            state, rec = store.read_json(store.record_path(self.out, k))
            if state != "ok" or rec is None:
                raise RuntimeError(f"chunk {k} has no commit record after every rank finished")
            rows.extend(rec["rows"])
            errors.extend(rec["errors"])
            for key in timings:
                timings[key] += rec["timings"][key]
        for tmp in (self.out / "chunks").glob(".*.tmp*"):  # left by a killed run
            tmp.unlink(missing_ok=True)
        return rows, errors, timings

    def write_table(self, rows: list[dict], errors: list[dict], fmt: str) -> None:
        """The per-image table and errors.json."""
        self.files.write_table(self.out, rows, fmt)
        self.files.write_json(self.out / "errors.json", errors)

    def write_manifest(self, manifest: dict) -> None:
        """manifest.json, written last: its presence means the run is complete."""
        self.files.write_json(self.out / "manifest.json", manifest)


class ChunkWriter:
    """One thread storing chunks (:meth:`RunStore.commit`) while the next batch is
    explained. At most two chunks wait, so memory stays bounded and errors surface
    promptly; after a failure it writes nothing more. ``busy_s``: its own busy time."""

    def __init__(self, rs: RunStore, stack: contextlib.ExitStack):
        self.rs = rs
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clear-native-writer")
        stack.callback(self.pool.shutdown, wait=True, cancel_futures=True)  # before the lock goes, on any error
        self.pending: collections.deque = collections.deque()
        self.failed: list[int] = []
        self.busy_s = 0.0

    def submit(self, k: int, start: int, stop: int, blocks: dict, record: dict, prep_s: float) -> None:
        """Queues chunk ``k`` (waits while two chunks wait; raises a failed chunk's error)."""
        while len(self.pending) >= 2:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._commit, k, start, stop, blocks, record, prep_s))

    def _commit(self, k: int, start: int, stop: int, blocks: dict, record: dict, prep_s: float) -> None:
        if self.failed:
            return
        t = time.perf_counter()
        try:
            self.rs.commit(k, start, stop, blocks, record, prep_s)
        except BaseException as e:
            self.failed.append(k)
            if isinstance(e, OSError):
                raise BatchError(store.write_error(self.rs.out, e)) from e
            raise
        self.busy_s += time.perf_counter() - t

    def close(self) -> None:
        """Waits for every queued chunk (raising a failed one's error) and stops the thread."""
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()
