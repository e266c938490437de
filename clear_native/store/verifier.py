"""``clear-native verify OUT [--repair]``: every check a resume makes, and those only a
finished run allows (the table, errors.json and the manifest against the commit
records), with what can be repaired and the command that redoes the bad chunks."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from clear_native.io import BatchError
from clear_native.store.arrays import _is_group, _usable, array_names
from clear_native.store.chunks import check_chunks, drop_records
from clear_native.store.files import Files, read_json, record_path, write_error, write_table
from clear_native.store.lock import OutLock
from clear_native.store.out import _is_identity, holds_run


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
    """What :func:`verify` found in OUT and what ``--repair`` can do about it."""

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


def _identity(out: Path, r: _Report) -> tuple[tuple[str, Any], tuple[str, Any]] | None:
    """Sets ``r.identity`` (run.json, else the copy in manifest.json or arrays.json) and
    ``r.arguments``; returns the (state, object) of manifest.json and arrays.json, or
    None when no identity is left (nothing can be checked)."""
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
            return None
        r.identity = alt[1]
        r.problems.append(f"run.json is {what}")
        r.fixes.append(("write", ("run.json", alt[1], f"restored run.json from {alt[0]}")))
    r.arguments = (arec or {}).get("arguments") or (manifest or {}).get("arguments")
    return (mstate, manifest), (astate, arec)


def _check_metadata(out: Path, r: _Report, n: int, b: int, arrays_json: tuple[str, Any]) -> dict:
    """Each array's metadata against arrays.json's copies; returns them (None: lost)."""
    astate, arec = arrays_json
    ident = r.identity
    root = out / "clear.zarr"
    copies = (arec or {}).get("arrays") if isinstance((arec or {}).get("arrays"), dict) else {}
    gstate, gmeta = read_json(root / "zarr.json")
    if not _is_group(gmeta):
        r.problems.append(f"clear.zarr/zarr.json is {gstate if gstate != 'ok' else 'not a Zarr group'}")
        r.fixes.append(("write", ("clear.zarr/zarr.json", {"zarr_format": 3, "node_type": "group",
                                                           "attributes": {}}, "rebuilt clear.zarr/zarr.json")))
    metas, rebuild_arrays_json = {}, False
    for name in array_names(ident):
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
    return metas


def _check_chunks(out: Path, r: _Report, metas: dict, chunks: list[tuple[int, int]]) -> dict[int, Any]:
    """Every chunk file against its commit record, then the sound records' rows against
    the arrays (prediction, label, valid); returns the sound chunks' records."""
    states = check_chunks(out, metas, chunks, range(len(chunks)))
    r.missing = [k for k, (s, _) in states.items() if s == "missing"]
    r.bad = {k: why for k, (s, why) in states.items() if s == "bad"}
    good = [k for k, (s, _) in states.items() if s == "ok"]
    records = {k: read_json(record_path(out, k))[1] for k in good}
    if good and all(metas.get(name) is not None for name in ("prediction", "label", "valid")):
        _check_rows(out, r, records, chunks)
    r.bad = dict(sorted(r.bad.items()))
    for k, why in r.bad.items():
        r.problems.append(f"chunk {k} [{chunks[k][0]}, {chunks[k][1]}): {why}")
    if r.bad:
        r.fixes.append(("drop", sorted(r.bad)))
    return records


def _check_rows(out: Path, r: _Report, records: dict[int, Any], chunks: list[tuple[int, int]]) -> None:
    """Marks bad the chunks whose records' rows disagree with the arrays."""
    import zarr

    try:
        g = zarr.open_group(str(out / "clear.zarr"), mode="r")
        cols = {name: g[name][:] for name in ("prediction", "label", "valid")}
    except Exception as e:  # noqa: BLE001 - a store zarr cannot read is a finding
        r.problems.append(f"cannot read prediction / label / valid ({type(e).__name__}: {e})")
        return
    for k, rec in records.items():
        start, stop = chunks[k]
        rows = rec["rows"]
        try:
            same = all(np.array_equal(cols[c][start:stop], np.array([row[c] for row in rows], cols[c].dtype))
                       for c in cols)
        except (KeyError, TypeError, ValueError):
            same = False
        if not same:
            r.bad[k] = "its table rows disagree with the arrays (prediction / label / valid)"


def _check_results(out: Path, r: _Report, manifest_json: tuple[str, Any], records: dict[int, Any],
                   n: int, chunks: list[tuple[int, int]]) -> None:
    """The table, errors.json and manifest, once every chunk is committed and sound."""
    mstate, manifest = manifest_json
    ident = r.identity
    if manifest is None:
        if mstate != "missing":
            r.problems.append(f"manifest.json is {mstate if mstate != 'ok' else 'not an object'}")
        if not r.missing and not r.bad:
            r.problems.append("every chunk is committed but the run was not finished (no manifest.json): rerun "
                              "the explain command (it redoes nothing, it writes the table and the manifest)")
        return
    if manifest.get("identity") != ident:
        r.problems.append("manifest.json records another run than run.json")
        r.fixes.append(("unlink", "manifest.json"))
        return
    if r.missing or r.bad:
        r.fixes.append(("unlink", "manifest.json"))  # the run is no longer complete
        return
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


def _inspect(out: Path) -> _Report:
    """Every check of OUT, its findings and the fixes ``--repair`` may make."""
    r = _Report()
    found = _identity(out, r)
    if found is None:
        return r
    manifest_json, arrays_json = found
    try:
        n, b = int(r.identity["images"]), int(r.identity["batch_size"])
    except (KeyError, TypeError, ValueError):
        r.problems.append("the run's identity lacks images / batch_size: start afresh with explain --overwrite")
        return r
    chunks = [(s, min(s + b, n)) for s in range(0, n, b)]
    r.chunks = len(chunks)
    metas = _check_metadata(out, r, n, b, arrays_json)
    records = _check_chunks(out, r, metas, chunks)
    _check_results(out, r, manifest_json, records, n, chunks)
    return r


def _table_matches(out: Path, rows: list[dict], fmt: str) -> bool:
    """Whether OUT's table is the one the commit records' ``rows`` make."""
    path = out / f"table.{fmt}"
    if not path.is_file():
        return False
    with tempfile.TemporaryDirectory(prefix="clear-native-verify-") as tmp:
        write_table(Path(tmp), rows, fmt)
        want = Path(tmp) / f"table.{fmt}"
        if fmt == "csv":
            return want.read_bytes() == path.read_bytes()
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).equals(pq.read_table(want))
        except Exception:  # noqa: BLE001 - unreadable: does not match
            return False


def _repair(out: Path, r: _Report, files: Files) -> list[str]:
    """Makes ``r.fixes`` (writes through ``files``); returns what it did, in words."""
    done = []
    for kind, arg in r.fixes:
        if kind == "write":
            rel, obj, what = arg
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            files.write_json(out / rel, obj)
            done.append(what)
        elif kind == "drop":
            drop_records(out, arg)
            done.append(f"deleted the commit records of chunks {_ks(arg)}: the explain command redoes them")
        elif kind == "unlink":
            if (out / arg).exists():
                (out / arg).unlink()
                done.append(f"deleted {arg} (the run is not complete until the explain command finishes it)")
        elif kind == "table":
            files.write_table(out, *arg)
            done.append(f"rewrote table.{arg[1]} from the commit records")
    return done


def _ks(ks) -> str:
    """Chunk numbers for a message (the first 20)."""
    ks = list(ks)
    return ", ".join(map(str, ks[:20])) + (f", ... ({len(ks)} chunks)" if len(ks) > 20 else "")


def verify(out, repair: bool = False, file=None, files: Files | None = None) -> int:
    """Checks OUT (``clear-native verify``); ``repair``: fixes what it can (writing through
    ``files``, default :class:`Files`) and deletes the commit records of bad chunks, so that
    rerunning the same explain command redoes exactly those. Prints its findings; returns 0
    (a complete run, every check passed), 1 (something to redo or fix) or raises
    :class:`BatchError` (not a run, in use: exit 2)."""
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
                done = _repair(out, r, files or Files())
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
