"""OUT before a run writes to it: what it holds (a run, nothing, or something else), the
run it holds (run.json against this run's identity), the lock, and ``--overwrite``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from clear_native.io import BatchError
from clear_native.store.files import Files, read_json
from clear_native.store.lock import LOCK_NAME, OutLock

# Entries a run writes under OUT (--overwrite deletes these and nothing else).
_RUN_ENTRIES = ("manifest.json", "errors.json", "table.parquet", "table.csv", "png", "chunks", "clear.zarr",
                "arrays.json", "run.json")


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


def open_out(out: Path, identity: dict, overwrite: bool, data: str | None,
             files: Files | None = None) -> tuple[OutLock, bool]:
    """Checks OUT, locks it and prepares it (rank 0). Returns (the lock, whether an earlier
    run is resumed). A refused run changes nothing under OUT: the checks run once before
    the lock (read only) and again under it. ``files``: how run.json is written (default
    :class:`Files`)."""
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
        return lock, _prepare(out, identity, overwrite, files or Files())
    except BaseException:
        lock.release()
        raise


def _shown(identity: dict, key: str) -> str:
    """``identity[key]`` for a message (fingerprints shortened; absent: not recorded)."""
    if key not in identity:
        return "(not recorded)"
    v = identity[key]
    if isinstance(v, str) and len(v) > 24:
        v = v[:12] + "..."
    return json.dumps(v)


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
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        values = ", ".join(f"{k} {_shown(old, k)} in OUT, {_shown(identity, k)} now" for k in diff)
        raise BatchError(f"--out {str(out)!r} holds a different run (differs in: {', '.join(diff)}): "
                         f"{values}; use another --out, the same arguments to resume, or --overwrite")


def _prepare(out: Path, identity: dict, overwrite: bool, files: Files) -> bool:
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
    files.write_json(out / "run.json", identity)
    return False
