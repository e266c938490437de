"""Commit records against the chunk files they describe: a resume and ``clear-native
verify`` check every committed chunk (record well formed and sealed, each file present
with its size and SHA-256) and redo those that fail."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clear_native.store.files import _sealed, chunk_path, file_digest, read_json, record_path

_HASH_THREADS = min(8, os.cpu_count() or 1)


def check_chunk(out: Path, k: int, start: int, stop: int, metas: dict) -> tuple[str, str]:
    """``("ok", "")``, ``("missing", reason)`` (no commit record) or ``("bad", reason)``."""
    state, rec = read_json(record_path(out, k))
    if state == "missing":
        return "missing", "no commit record"
    if state == "unreadable":
        return "bad", f"commit record unreadable ({rec})"
    if not isinstance(rec, dict) or not rec:
        return "bad", "commit record is empty or not an object"
    if "seal" not in rec:
        return "bad", "commit record has no seal (written by an older version, or edited)"
    if not _sealed(rec):
        return "bad", "commit record was altered (its seal does not match)"
    if (rec.get("chunk"), rec.get("start"), rec.get("stop")) != (k, start, stop):
        return "bad", f"commit record is for chunk {rec.get('chunk')} [{rec.get('start')}, {rec.get('stop')})"
    if not (isinstance(rec.get("rows"), list) and len(rec["rows"]) == stop - start
            and isinstance(rec.get("errors"), list) and isinstance(rec.get("timings"), dict)):
        return "bad", "commit record is malformed (rows / errors / timings)"
    files = rec.get("files")
    if not isinstance(files, dict) or set(files) != set(metas):
        return "bad", "commit record lists other arrays than the store holds"
    for name in sorted(metas):
        f, meta = files[name], metas[name]
        want = chunk_path(name, meta, k) if meta is not None else None
        if not isinstance(f, dict) or (want is not None and f.get("path") != want) \
                or not str(f.get("path", "")).startswith(f"clear.zarr/{name}/"):
            return "bad", f"commit record has a wrong entry for {name}"
        path = out / f["path"]
        if f.get("size") is None:
            if path.exists():
                return "bad", f"{f['path']} exists, but the chunk was committed as fill values (no file)"
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "bad", f"{f['path']} is missing"
        if size != f["size"]:
            return "bad", f"{f['path']} has {size} bytes, committed {f['size']}"
        d = file_digest(path)
        if d is None or d[1] != f.get("sha256"):
            return "bad", f"{f['path']}: its SHA-256 differs from the commit record"
    return "ok", ""


def check_chunks(out: Path, metas: dict, chunks: list[tuple[int, int]], ks) -> dict[int, tuple[str, str]]:
    """:func:`check_chunk` of each chunk of ``ks`` (threads: hashing releases the GIL)."""
    ks = list(ks)
    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        states = pool.map(lambda k: check_chunk(out, k, *chunks[k], metas), ks)
        return dict(zip(ks, states))


def drop_records(out: Path, ks) -> None:
    """Deletes the commit records of chunks ``ks``: a resume then redoes them."""
    for k in ks:
        record_path(out, k).unlink(missing_ok=True)
