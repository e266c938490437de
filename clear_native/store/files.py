"""The files of a run under OUT and how they are written: atomic JSON, sealed commit
records, chunk file digests, the per-image table, the messages for failed writes, and
:class:`Files`, the one object every write goes through."""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> tuple[str, Any]:
    """``("ok", value)``, ``("missing", None)`` or ``("unreadable", reason)``."""
    try:
        with open(path) as f:
            return "ok", json.load(f)
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError) as e:
        return "unreadable", f"{type(e).__name__}: {e}"


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def seal(record: dict) -> dict:
    """``record`` with ``seal``: the SHA-256 of its canonical JSON."""
    body = {k: v for k, v in record.items() if k != "seal"}
    return body | {"seal": hashlib.sha256(_canonical(body)).hexdigest()}


def _sealed(record: dict) -> bool:
    body = {k: v for k, v in record.items() if k != "seal"}
    return record.get("seal") == hashlib.sha256(_canonical(body)).hexdigest()


def file_digest(path: Path, sync: bool = False) -> tuple[int, str] | None:
    """(size, SHA-256) of a file, None when it does not exist; ``sync``: fsync it too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        h, size = hashlib.sha256(), 0
        while True:
            block = os.read(fd, 1 << 22)
            if not block:
                break
            h.update(block)
            size += len(block)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return size, h.hexdigest()


def write_error(out: Path, e: OSError) -> str:
    """The message for an OSError while writing under OUT (exit 2)."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EROFS: "the file system is read-only"}.get(e.errno, "the write failed")
    return (f"cannot write to --out {str(out)!r}: {why} ({e}); the chunks committed so far are kept: "
            "free space or fix the permissions, then rerun the same command to resume")


TABLE_COLUMNS = ("index", "key", "label", "prediction", "valid", "prediction_share", "top_dominant", "agrees",
                 "strong_share", "prediction_share_strong", "dominant_classes", "dominant_shares", "error")


def write_table(out: Path, rows: list[dict], fmt: str) -> None:
    """``OUT/table.parquet`` or ``OUT/table.csv`` (``fmt``) of the rows (write-then-rename)."""
    cols = TABLE_COLUMNS
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"index": pa.int64(), "key": pa.string(), "label": pa.int64(), "prediction": pa.int32(),
                 "valid": pa.bool_(), "prediction_share": pa.float32(), "top_dominant": pa.int32(),
                 "agrees": pa.bool_(), "strong_share": pa.float32(), "prediction_share_strong": pa.float32(),
                 "dominant_classes": pa.list_(pa.int32()),
                 "dominant_shares": pa.list_(pa.float32()), "error": pa.string()}
        table = pa.table({c: pa.array([r[c] for r in rows], type=types[c]) for c in cols})
        tmp = out / ".table.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, out / "table.parquet")
    else:
        tmp = out / ".table.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in rows:
                w.writerow([json.dumps(r[c]) if isinstance(r[c], list) else ("" if r[c] is None else r[c])
                            for c in cols])
        os.replace(tmp, out / "table.csv")


def chunk_path(name: str, meta: dict, k: int) -> str:
    """Path (relative to OUT) of chunk ``k``'s file of array ``name`` (one chunk along
    every axis but the first)."""
    enc = meta.get("chunk_key_encoding") or {"name": "default"}
    default = enc.get("name", "default") == "default"
    sep = (enc.get("configuration") or {}).get("separator", "/" if default else ".")
    coords = [str(k)] + ["0"] * (len(meta["shape"]) - 1)
    key = sep.join(["c", *coords]) if default else sep.join(coords)
    return f"clear.zarr/{name}/{key}"


def commit_files(out: Path, metas: dict, k: int) -> dict:
    """``files`` of chunk ``k``'s commit record; flushes each file to disk first."""
    files = {}
    for name, meta in metas.items():
        rel = chunk_path(name, meta, k)
        d = file_digest(out / rel, sync=True)
        files[name] = {"path": rel, "size": d[0] if d else None, "sha256": d[1] if d else None}
    return files


def record_path(out: Path, k: int) -> Path:
    return out / "chunks" / f"{k:06d}.json"


class Files:
    """How a run writes under OUT: one method per kind of write that the store makes,
    so that a caller can fail any step (a subclass raising where a full disk, a denied
    permission or a kill would strike; the fault-injection tests do) without patching a
    module. The methods of this class are the real writes."""

    def write_json(self, path: Path, obj: Any) -> None:
        """``obj`` as JSON at ``path``, atomically: run.json, arrays.json, the arrays'
        zarr.json, the commit records, errors.json, manifest.json."""
        write_json_atomic(path, obj)

    def write_table(self, out: Path, rows: list[dict], fmt: str) -> None:
        """The per-image table (:func:`write_table`)."""
        write_table(out, rows, fmt)

    def zarr_store(self, root: Path):
        """The Zarr store of ``OUT/clear.zarr`` through which the chunks are written."""
        import zarr

        return zarr.storage.LocalStore(root)

    def write_chunk(self, array, start: int, stop: int, block) -> None:
        """Rows ``start:stop`` (one chunk) of one Zarr array."""
        array[start:stop] = block

    def commit_files(self, out: Path, metas: dict, k: int) -> dict:
        """The ``files`` of chunk ``k``'s commit record, each file flushed to disk
        (:func:`commit_files`)."""
        return commit_files(out, metas, k)
