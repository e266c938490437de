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
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from clear_native.io import BatchError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# Entries a run writes under OUT (--overwrite deletes these and nothing else).
_RUN_ENTRIES = ("manifest.json", "errors.json", "table.parquet", "table.csv", "png", "chunks", "clear.zarr",
                "arrays.json", "run.json")
_BASE_ARRAYS = ("prediction", "target", "label", "logits", "valid")
_HASH_THREADS = min(8, os.cpu_count() or 1)


# -- files --------------------------------------------------------------------------------

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


# -- the lock -----------------------------------------------------------------------------

class OutLock:
    """An exclusive advisory lock on ``OUT/.lock`` (``fcntl.flock``, non-blocking)."""

    def __init__(self, out: Path, fd: int | None):
        self.out, self.fd = out, fd

    @classmethod
    def acquire(cls, out: Path) -> "OutLock":
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            finally:
                os.close(fd)
            raise BatchError(f"--out {str(out)!r} is in use by another run ({holder}); wait for it to end "
                             "or stop it, or use another --out") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            # Some network file systems (Lustre without -o flock, ...) have no flock.
            logger.warning("cannot lock %s (%s): a second run on the same OUT would not be detected", out, e)
            return cls(out, fd)
        holder = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        try:
            if os.pread(fd, 200, 0) != holder:  # unchanged when it already names this process
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder, 0)
        except OSError:
            os.close(fd)  # releases the lock
            raise
        return cls(out, fd)

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# -- OUT ----------------------------------------------------------------------------------

def _is_identity(obj) -> bool:
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith("clear-native-batch")


def holds_run(out: Path) -> bool:
    """Whether OUT holds a clear-native run: run.json (even unreadable, but not a
    readable JSON file of something else), arrays.json or manifest.json."""
    state, obj = read_json(out / "run.json")
    if state == "unreadable" or (state == "ok" and _is_identity(obj)):
        return True
    return (out / "arrays.json").is_file() or (out / "manifest.json").is_file()


def _entries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)


def _check_run_or_empty(out: Path, overwrite: bool) -> None:
    names = _entries(out)
    if not names or holds_run(out):
        return
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    if overwrite:
        raise BatchError(f"--out {str(out)!r} holds files that are not a clear-native run ({shown}); "
                         "--overwrite only replaces a clear-native run or an empty folder: "
                         "choose another --out")
    raise BatchError(f"--out {str(out)!r} is not empty and holds no clear-native run ({shown}); "
                     "choose another folder")


def check_out_and_data(out: Path, data: str | None) -> None:
    """Refuses an OUT that is, lies inside or contains the data (a folder or file)."""
    if not data or not Path(data).exists():
        return
    o, d = out.resolve(), Path(data).resolve()
    if o == d:
        how = "is --data"
    elif d in o.parents:
        how = f"lies inside --data {str(data)!r}"
    elif o in d.parents:
        how = f"contains --data {str(data)!r}"
    else:
        return
    raise BatchError(f"--out {str(out)!r} {how}: the results must not mix with the input data "
                     "(and --overwrite would delete it); choose an --out outside the data")


def open_out(out: Path, identity: dict, overwrite: bool, data: str | None) -> tuple[OutLock, bool]:
    """Checks OUT, locks it and prepares it (rank 0). Returns (the lock, whether an earlier
    run is resumed). A refused run changes nothing under OUT: the checks run once before
    the lock (read only) and again under it."""
    check_out_and_data(out, data)
    if out.exists() and not out.is_dir():
        raise BatchError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and _entries(out):
        _check_run_or_empty(out, overwrite)  # before a .lock lands in someone else's folder
        if not overwrite:
            _same_run(out, identity)
    out.mkdir(parents=True, exist_ok=True)
    lock = OutLock.acquire(out)
    try:
        return lock, _prepare(out, identity, overwrite)
    except BaseException:
        lock.release()
        raise


def _same_run(out: Path, identity: dict) -> None:
    """Raises unless OUT's run.json is ``identity``."""
    state, old = read_json(out / "run.json")
    if state != "ok" or not _is_identity(old):
        what = "missing" if state == "missing" else (
            f"unreadable ({old})" if state == "unreadable" else "not a clear-native run record")
        raise BatchError(
            f"run.json of {str(out)!r} is {what}, but OUT holds a clear-native run whose results "
            f"may be intact: run `clear-native verify {out} --repair` to restore it, then this "
            "command again to resume; or pass --overwrite to start afresh")
    if old != identity:
        from clear_native.batch import _shown

        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        values = ", ".join(f"{k} {_shown(old, k)} in OUT, {_shown(identity, k)} now" for k in diff)
        raise BatchError(f"--out {str(out)!r} holds a different run (differs in: {', '.join(diff)}): "
                         f"{values}; use another --out, the same arguments to resume, or --overwrite")


def _prepare(out: Path, identity: dict, overwrite: bool) -> bool:
    if _entries(out):
        _check_run_or_empty(out, overwrite)  # again, now under the lock
        if not overwrite:
            _same_run(out, identity)
            # complete again only when this invocation writes its manifest
            (out / "manifest.json").unlink(missing_ok=True)
            (out / "chunks").mkdir(exist_ok=True)
            return True
        # --overwrite: delete what a run writes (run.json last: a kill midway leaves a run)
        for name in [n for n in _entries(out) if n.startswith(".") and ".tmp" in n] + list(_RUN_ENTRIES):
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    (out / "chunks").mkdir(exist_ok=True)
    write_json_atomic(out / "run.json", identity)
    return False


# -- arrays -------------------------------------------------------------------------------

def _fresh_metadata(specs: dict, batch_size: int) -> dict:
    """The Zarr metadata (zarr.json contents) of the group ("") and of each array, as this
    zarr version creates them."""
    import zarr

    with tempfile.TemporaryDirectory(prefix="clear-native-meta-") as tmp:
        group = zarr.open_group(tmp, mode="w")
        for name, (shape, dt, fill) in specs.items():
            group.create_array(name, shape=shape, chunks=(batch_size, *shape[1:]), dtype=dt, fill_value=fill)
        root = Path(tmp)
        return {name: json.loads((root / name / "zarr.json").read_text()) for name in ("", *specs)}


def _same_array(meta, want: dict) -> bool:
    """Whether ``meta`` is a usable array metadata equal to ``want`` in what the store
    relies on (codecs may differ between zarr versions)."""
    return (isinstance(meta, dict) and meta.get("node_type") == "array" and isinstance(meta.get("codecs"), list)
            and all(meta.get(k) == want.get(k) for k in ("zarr_format", "shape", "data_type", "fill_value",
                                                          "chunk_grid", "chunk_key_encoding")))


def _is_group(meta) -> bool:
    return isinstance(meta, dict) and meta.get("node_type") == "group" and meta.get("zarr_format") == 3


def ensure_arrays(out: Path, specs: dict, batch_size: int, identity: dict, arguments: dict) -> list[str]:
    """Makes ``OUT/clear.zarr`` hold every array of ``specs`` without touching a chunk file:
    a missing or unusable array metadata is restored from ``arrays.json`` or rebuilt; then
    writes ``arrays.json``. Returns what it had to fix (empty for a fresh or sound store)."""
    root = out / "clear.zarr"
    fresh = _fresh_metadata(specs, batch_size)
    state, rec = read_json(out / "arrays.json")
    copies = rec.get("arrays") if state == "ok" and isinstance(rec, dict) and isinstance(rec.get("arrays"), dict) \
        else {}
    fixed = []
    root.mkdir(exist_ok=True)
    gstate, gmeta = read_json(root / "zarr.json")
    if not _is_group(gmeta):
        write_json_atomic(root / "zarr.json", fresh[""])
        if gstate != "missing":
            fixed.append(f"clear.zarr/zarr.json was {gstate if gstate != 'ok' else 'not a group'}: rebuilt")
    final = {}
    for name in specs:
        path = root / name / "zarr.json"
        st, cur = read_json(path)
        if st == "ok" and _same_array(cur, fresh[name]):
            final[name] = cur
            continue
        if _same_array(copies.get(name), fresh[name]):
            meta, how = copies[name], "restored from arrays.json"
        else:
            meta, how = fresh[name], "rebuilt from the run's options"
        path.parent.mkdir(exist_ok=True)
        write_json_atomic(path, meta)
        final[name] = meta
        if st != "missing" or (root / name / "c").exists():
            what = {"missing": "missing", "unreadable": "unreadable"}.get(st, "not this run's array")
            fixed.append(f"clear.zarr/{name}/zarr.json was {what}: {how} (its chunk files are kept and "
                         "checked against their commit records)")
    want = {"identity": identity, "arguments": arguments, "arrays": final}
    if rec != want:
        write_json_atomic(out / "arrays.json", want)
        if state == "unreadable" or (state == "ok" and (not isinstance(rec, dict) or rec.get("arrays") != final)):
            fixed.append(f"arrays.json was {state if state != 'ok' else 'out of date'}: rebuilt from the arrays")
        elif state == "missing" and (out / "chunks").is_dir() and any((out / "chunks").glob("*.json")):
            fixed.append("arrays.json was missing: rebuilt from the arrays")
    for f in fixed:
        logger.warning("%s: %s", out, f)
    return fixed


# -- commit records -----------------------------------------------------------------------

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
    for k in ks:
        record_path(out, k).unlink(missing_ok=True)


# -- verify -------------------------------------------------------------------------------

def _array_names(identity: dict) -> list[str]:
    from clear_native.batch import _STORE_FIELDS

    names = list(_BASE_ARRAYS)
    for item in identity.get("store", ()):
        names += [name for name, _ in _STORE_FIELDS.get(item, ())]
    return names


def _usable(meta, n: int, b: int) -> bool:
    try:
        return (meta.get("node_type") == "array" and isinstance(meta.get("codecs"), list)
                and meta["shape"][0] == n and meta["chunk_grid"]["configuration"]["chunk_shape"][0] == b)
    except (AttributeError, KeyError, IndexError, TypeError):
        return False


def _command(arguments, out: Path) -> str | None:
    """The explain command line of recorded ``arguments`` (the options of
    :class:`clear_native.batch.BatchOptions`, flags named after them); None when not recorded."""
    if not isinstance(arguments, dict):
        return None
    import shlex

    parts = ["clear-native", "explain"]
    for key in ("model", "data"):
        if arguments.get(key):
            parts += [f"--{key}", str(arguments[key])]
    parts += ["--out", str(out)]
    for key, v in arguments.items():
        if key in ("model", "data", "out", "overwrite", "progress") or v is None or v is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if v is True else [flag, ",".join(map(str, v)) if isinstance(v, list) else str(v)]
    return " ".join(shlex.quote(p) for p in parts)


class _Report:
    def __init__(self):
        self.problems: list[str] = []    # what is wrong
        self.fixes: list[tuple[str, Any]] = []   # what --repair can do: (kind, arg)
        self.bad: dict[int, str] = {}    # chunk -> reason (redo)
        self.missing: list[int] = []     # chunks without a commit record (not done yet)
        self.identity = None
        self.arguments = None
        self.chunks = 0
        self.complete = False

    @property
    def clean(self) -> bool:
        return not self.problems and not self.bad and not self.missing and self.complete


def _inspect(out: Path) -> _Report:
    r = _Report()
    state, ident = read_json(out / "run.json")
    mstate, manifest = read_json(out / "manifest.json")
    astate, arec = read_json(out / "arrays.json")
    manifest = manifest if mstate == "ok" and isinstance(manifest, dict) else None
    arec = arec if astate == "ok" and isinstance(arec, dict) else None
    alt = None
    for src, rec in (("manifest.json", manifest), ("arrays.json", arec)):
        if rec is not None and _is_identity(rec.get("identity")):
            alt = alt or (src, rec["identity"])
    if state == "ok" and _is_identity(ident):
        r.identity = ident
    else:
        what = {"missing": "missing", "unreadable": f"unreadable ({ident})"}.get(state, "not a run record")
        if alt is None:
            r.problems.append(f"run.json is {what}, and neither manifest.json nor arrays.json records the run's "
                              "identity: nothing can be checked; start afresh with explain --overwrite")
            return r
        r.identity = alt[1]
        r.problems.append(f"run.json is {what}")
        r.fixes.append(("write", ("run.json", alt[1], f"restored run.json from {alt[0]}")))
    ident = r.identity
    r.arguments = (arec or {}).get("arguments") or (manifest or {}).get("arguments")
    try:
        n, b = int(ident["images"]), int(ident["batch_size"])
    except (KeyError, TypeError, ValueError):
        r.problems.append("the run's identity lacks images / batch_size: start afresh with explain --overwrite")
        return r
    chunks = [(s, min(s + b, n)) for s in range(0, n, b)]
    r.chunks = len(chunks)

    # arrays: metadata against arrays.json's copies
    root = out / "clear.zarr"
    copies = (arec or {}).get("arrays") if isinstance((arec or {}).get("arrays"), dict) else {}
    gstate, gmeta = read_json(root / "zarr.json")
    if not _is_group(gmeta):
        r.problems.append(f"clear.zarr/zarr.json is {gstate if gstate != 'ok' else 'not a Zarr group'}")
        r.fixes.append(("write", ("clear.zarr/zarr.json", {"zarr_format": 3, "node_type": "group",
                                                           "attributes": {}}, "rebuilt clear.zarr/zarr.json")))
    metas, rebuild_arrays_json = {}, False
    for name in _array_names(ident):
        st, meta = read_json(root / name / "zarr.json")
        copy = copies.get(name)
        if _usable(meta, n, b):
            metas[name] = meta
            if copy != meta:
                rebuild_arrays_json = True
            continue
        what = {"missing": "missing", "unreadable": "unreadable"}.get(st, "not this run's array")
        if _usable(copy, n, b):
            metas[name] = copy
            r.problems.append(f"clear.zarr/{name}/zarr.json is {what}")
            r.fixes.append(("write", (f"clear.zarr/{name}/zarr.json", copy,
                                      f"restored clear.zarr/{name}/zarr.json from arrays.json")))
        else:
            metas[name] = None
            r.problems.append(f"clear.zarr/{name}/zarr.json is {what} and arrays.json has no copy: rerunning "
                              "the explain command rebuilds it")
    if arec is None or not _is_identity(arec.get("identity")) or arec.get("identity") != ident \
            or rebuild_arrays_json or set(copies) != set(metas):
        if arec is None:
            r.problems.append(f"arrays.json is {astate if astate != 'ok' else 'not an object'}")
        else:
            r.problems.append("arrays.json does not match the run or its arrays")
        if all(m is not None for m in metas.values()):
            r.fixes.append(("write", ("arrays.json", {"identity": ident, "arguments": r.arguments,
                                                      "arrays": metas}, "rebuilt arrays.json from the arrays")))

    # chunks: every file against its commit record
    states = check_chunks(out, metas, chunks, range(len(chunks)))
    r.missing = [k for k, (s, _) in states.items() if s == "missing"]
    r.bad = {k: why for k, (s, why) in states.items() if s == "bad"}
    good = [k for k, (s, _) in states.items() if s == "ok"]
    records = {k: read_json(record_path(out, k))[1] for k in good}

    # the records' rows against the arrays (prediction, label, valid)
    if good and all(metas.get(name) is not None for name in ("prediction", "label", "valid")):
        import numpy as np
        import zarr

        try:
            g = zarr.open_group(str(root), mode="r")
            cols = {name: g[name][:] for name in ("prediction", "label", "valid")}
        except Exception as e:  # noqa: BLE001 - a store zarr cannot read is a finding
            r.problems.append(f"cannot read prediction / label / valid ({type(e).__name__}: {e})")
            cols = None
        for k in good if cols is not None else ():
            start, stop = chunks[k]
            rows = records[k]["rows"]
            try:
                same = all(np.array_equal(cols[c][start:stop], np.array([row[c] for row in rows], cols[c].dtype))
                           for c in cols)
            except (KeyError, TypeError, ValueError):
                same = False
            if not same:
                r.bad[k] = "its table rows disagree with the arrays (prediction / label / valid)"
    r.bad = dict(sorted(r.bad.items()))
    for k, why in r.bad.items():
        r.problems.append(f"chunk {k} [{chunks[k][0]}, {chunks[k][1]}): {why}")
    if r.bad:
        r.fixes.append(("drop", sorted(r.bad)))

    # the table, errors.json and manifest, once every chunk is committed and sound
    if manifest is None:
        if mstate != "missing":
            r.problems.append(f"manifest.json is {mstate if mstate != 'ok' else 'not an object'}")
        if not r.missing and not r.bad:
            r.problems.append("every chunk is committed but the run was not finished (no manifest.json): rerun "
                              "the explain command (it redoes nothing, it writes the table and the manifest)")
        return r
    if manifest.get("identity") != ident:
        r.problems.append("manifest.json records another run than run.json")
        r.fixes.append(("unlink", "manifest.json"))
        return r
    if r.missing or r.bad:
        r.fixes.append(("unlink", "manifest.json"))  # the run is no longer complete
        return r
    r.complete = True
    rows = [row for k in range(len(chunks)) for row in records[k]["rows"]]
    errors = [e for k in range(len(chunks)) for e in records[k]["errors"]]
    fmt = ident.get("table", "parquet")
    if not _table_matches(out, rows, fmt):
        r.problems.append(f"table.{fmt} is missing, unreadable or disagrees with the commit records")
        r.fixes.append(("table", (rows, fmt)))
    if read_json(out / "errors.json") != ("ok", errors):
        r.problems.append("errors.json is missing, unreadable or disagrees with the commit records")
        r.fixes.append(("write", ("errors.json", errors, "rewrote errors.json from the commit records")))
    counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
    if counts.get("images") != n or counts.get("chunks") != len(chunks):
        r.problems.append("manifest.json counts another number of images / chunks")
    return r


def _table_matches(out: Path, rows: list[dict], fmt: str) -> bool:
    from clear_native.batch import _write_table

    path = out / f"table.{fmt}"
    if not path.is_file():
        return False
    with tempfile.TemporaryDirectory(prefix="clear-native-verify-") as tmp:
        _write_table(Path(tmp), rows, fmt)
        want = Path(tmp) / f"table.{fmt}"
        if fmt == "csv":
            return want.read_bytes() == path.read_bytes()
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).equals(pq.read_table(want))
        except Exception:  # noqa: BLE001 - unreadable: does not match
            return False


def _repair(out: Path, r: _Report) -> list[str]:
    done = []
    for kind, arg in r.fixes:
        if kind == "write":
            rel, obj, what = arg
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / rel, obj)
            done.append(what)
        elif kind == "drop":
            drop_records(out, arg)
            done.append(f"deleted the commit records of chunks {_ks(arg)}: the explain command redoes them")
        elif kind == "unlink":
            if (out / arg).exists():
                (out / arg).unlink()
                done.append(f"deleted {arg} (the run is not complete until the explain command finishes it)")
        elif kind == "table":
            from clear_native.batch import _write_table

            _write_table(out, *arg)
            done.append(f"rewrote table.{arg[1]} from the commit records")
    return done


def _ks(ks) -> str:
    ks = list(ks)
    return ", ".join(map(str, ks[:20])) + (f", ... ({len(ks)} chunks)" if len(ks) > 20 else "")


def verify(out, repair: bool = False, file=None) -> int:
    """Checks OUT (``clear-native verify``); ``repair``: fixes what it can and deletes the
    commit records of bad chunks, so that rerunning the same explain command redoes exactly
    those. Prints its findings; returns 0 (a complete run, every check passed), 1 (something
    to redo or fix) or raises :class:`BatchError` (not a run, in use: exit 2)."""
    file = file or sys.stdout
    out = Path(out)
    if not out.is_dir():
        raise BatchError(f"{str(out)!r} is not a folder")
    if not holds_run(out):
        raise BatchError(f"{str(out)!r} holds no clear-native run")
    try:
        lock = OutLock.acquire(out)
    except OSError as e:
        if repair:
            raise BatchError(write_error(out, e)) from e
        # a read-only copy or mount: check it without the lock
        print(f"note: cannot lock {out} ({e}); checking it unlocked", file=file)
        lock = OutLock(out, None)
    with lock:
        r = _inspect(out)
        for p in r.problems:
            print(f"problem: {p}", file=file)
        if repair and r.fixes:
            try:
                done = _repair(out, r)
            except OSError as e:
                raise BatchError(write_error(out, e)) from e
            for d in done:
                print(f"repaired: {d}", file=file)
            r = _inspect(out)
            for p in r.problems:
                print(f"still: {p}", file=file)
        elif r.fixes and not repair:
            print(f"`clear-native verify {out} --repair` fixes what it can and marks the bad chunks for redoing",
                  file=file)
    redo = sorted(set(r.missing) | set(r.bad))
    if r.clean:
        print(f"{out}: ok: {r.chunks} chunks, every chunk file matches its commit record, the table and "
              "errors.json match the records", file=file)
        return 0
    if redo:
        cmd = _command(r.arguments, out)
        print(f"{out}: {len(redo)} of {r.chunks} chunks to (re)do: {_ks(redo)}; rerun the explain command with "
              "the same arguments" + (f":\n  {cmd}" if cmd else ""), file=file)
    else:
        print(f"{out}: not sound (see above)", file=file)
    return 1


def main(args) -> int:
    """The ``verify`` subcommand: exit 0 (sound and complete), 1 (something to redo or
    fix), 2 (not a run, in use, cannot write)."""
    try:
        return verify(args.out, repair=args.repair)
    except BatchError as e:
        print(f"clear-native verify: error: {e}", file=sys.stderr)
        return 2
