"""The batch run's store under OUT (see :mod:`clear_native.batch`): what keeps a run's
results safe against crashes, full disks, corrupt files and a second writer, and
``clear-native verify OUT [--repair]``.

* ``OUT/.lock``: an advisory lock (``flock``, exclusive, non-blocking) that the writing
  process (rank 0 under torchrun; the other ranks write only after rank 0 holds it, and
  rank 0 keeps it until every rank is done) and ``clear-native verify`` hold for their
  whole run. A second run on the same OUT exits 2 naming the holder's pid. The lock
  goes with its process (a killed run leaves no stale lock); the file itself stays.
* ``OUT/run.json``: the run's identity (the options that change the results).
  ``OUT/arrays.json``: the identity again, the last invocation's arguments and a copy of
  every array's Zarr metadata. Each restores the other: a resume never re-creates an
  array holding committed chunks; it rebuilds a missing or unreadable ``arrays.json``
  from the arrays (and an array's missing or unreadable ``zarr.json`` from
  ``arrays.json``, or from the run's options), and verifies the chunks.
* ``OUT/chunks/<k>.json``: chunk ``k``'s commit record, written (write-then-rename)
  after the chunk's array files are written and flushed. Besides the chunk's table rows
  and errors it holds ``files``: per array the path of the chunk's file (relative to
  OUT; one file per array per chunk, as a chunk holds one batch), its size and SHA-256,
  or ``null`` size / hash where the chunk holds only fill values (Zarr then writes no
  file), and ``seal``: the SHA-256 of the record's canonical JSON, so that an edited or
  truncated record shows. A resume checks every committed chunk (record well formed and
  sealed, each file present with its size and SHA-256: it reads the store once, several
  threads per process, each rank its own chunks) and redoes those that fail, reporting
  them (``BatchSummary.redone``, ``manifest.json`` ``counts.chunks_redone``). A record
  that is empty, malformed, unsealed (an older version's) or altered counts as not
  committed.

Every write under OUT goes through a :class:`Files` object (run.json, the arrays'
metadata and chunks, the commit records, the table, errors.json, the manifest); the
default writes, and a subclass can fail any step. Modules:
:mod:`~clear_native.store.files` (atomic JSON, seals, digests, the table, :class:`Files`),
:mod:`~clear_native.store.lock`, :mod:`~clear_native.store.out` (OUT and run.json),
:mod:`~clear_native.store.arrays`, :mod:`~clear_native.store.chunks` (commit records
checked), :mod:`~clear_native.store.verifier`.
"""
from __future__ import annotations

from clear_native.store.arrays import STORE_FIELDS, array_names, ensure_arrays
from clear_native.store.chunks import check_chunk, check_chunks, drop_records
from clear_native.store.files import (TABLE_COLUMNS, Files, chunk_path, commit_files, file_digest, read_json,
                                      record_path, seal, write_error, write_json_atomic, write_table)
from clear_native.store.lock import LOCK_NAME, OutLock
from clear_native.store.out import check_out_and_data, holds_run, open_out
from clear_native.store.verifier import main, verify

__all__ = ["Files", "OutLock", "LOCK_NAME", "STORE_FIELDS", "TABLE_COLUMNS", "array_names", "check_chunk",
           "check_chunks", "check_out_and_data", "chunk_path", "commit_files", "drop_records", "ensure_arrays",
           "file_digest", "holds_run", "main", "open_out", "read_json", "record_path", "seal", "verify",
           "write_error", "write_json_atomic", "write_table"]
