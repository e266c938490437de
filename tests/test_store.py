"""The batch run's store under faults (``clear_native.store``; issue 16, items 1-4): a
resume never resets committed arrays, --overwrite only replaces a run, a second writer
is refused by a lock that dies with its process, every committed chunk is checked against
the size and SHA-256 in its commit record and redone when it fails, a kill at any commit
step or a full disk loses no committed chunk, ``clear-native verify OUT [--repair]``."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clear_native import batch, cli, store
from test_batch import HERE, MODEL, _arrays, _assert_same_results, _env, _images, _table, explain

pytestmark = pytest.mark.usefixtures("one_thread")

zarr = pytest.importorskip("zarr")
pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

N, B = 48, 12  # 4 chunks
CHUNKS = N // B


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("store-data") / "d.npz"
    np.savez(path, images=_images(N, seed=7)[0])
    return path


def _args(npz, out, *extra):
    return ["--model", MODEL, "--data", str(npz), "--out", str(out), "--batch-size", str(B), *map(str, extra)]


@pytest.fixture(scope="module")
def ref(npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("store-ref") / "out"
    assert explain(*_args(npz, out)) == 0
    return out


@pytest.fixture
def run_copy(ref, tmp_path):
    """A copy of the complete reference run to damage."""
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    return out


def _manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())


def _chunk_file(out, name, k):
    extra = "/0/0" if name in ("dominant_class", "dominant_response") else ("/0" if name == "logits" else "")
    return Path(out) / "clear.zarr" / name / "c" / f"{k}{extra}"


def _record(out, k):
    return Path(out) / "chunks" / f"{k:06d}.json"


def _verify(out, *extra, capsys=None):
    rc = cli.main(["verify", str(out), *extra])
    return rc, (capsys.readouterr() if capsys else None)


# -- item 1: arrays.json / array metadata lost: rebuilt, committed chunks kept ----------------

@pytest.mark.parametrize("fault", ["arrays.json deleted", "arrays.json corrupt", "arrays.json {}",
                                   "array zarr.json corrupt", "array zarr.json deleted", "group zarr.json corrupt",
                                   "array folder deleted"])
def test_resume_never_resets_committed_arrays(npz, ref, run_copy, fault, capsys):
    out = run_copy
    target = {"arrays.json deleted": out / "arrays.json", "arrays.json corrupt": out / "arrays.json",
              "arrays.json {}": out / "arrays.json",
              "array zarr.json corrupt": out / "clear.zarr" / "dominant_class" / "zarr.json",
              "array zarr.json deleted": out / "clear.zarr" / "logits" / "zarr.json",
              "group zarr.json corrupt": out / "clear.zarr" / "zarr.json",
              "array folder deleted": out / "clear.zarr" / "dominant_response"}[fault]
    if fault.endswith("deleted"):
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    else:
        target.write_text("{}" if fault.endswith("{}") else '{"shape": [4')
    assert explain(*_args(npz, out)) == 0
    # every committed chunk survives; only the chunks whose files are gone are redone
    redone = CHUNKS if fault == "array folder deleted" else 0
    counts = _manifest(out)["counts"]
    assert counts["chunks_this_invocation"] == redone
    assert [r["chunk"] for r in counts["chunks_redone"]] == list(range(redone))
    _assert_same_results(out, ref)
    rec = json.loads((out / "arrays.json").read_text())
    assert rec["identity"] == json.loads((out / "run.json").read_text())
    assert sorted(rec["arrays"]) == sorted(_arrays(ref))
    assert _verify(out, capsys=capsys)[0] == 0


# -- item 4: every committed chunk is checked on resume; those that fail are redone -----------

def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


def _swap(a, b):
    x, y = a.read_bytes(), b.read_bytes()
    a.write_bytes(y)
    b.write_bytes(x)


def _edit_record(out, k, fn):
    p = _record(out, k)
    rec = json.loads(p.read_text())
    fn(rec)
    p.write_text(json.dumps(rec))


FAULTS = {
    "chunk truncated": (lambda o: _truncate(_chunk_file(o, "dominant_class", 1)), [1]),
    "chunk deleted": (lambda o: _chunk_file(o, "dominant_response", 2).unlink(), [2]),
    "chunks swapped": (lambda o: _swap(_chunk_file(o, "dominant_class", 0), _chunk_file(o, "dominant_class", 1)),
                       [0, 1]),
    "chunk bit flipped": (lambda o: _flip(_chunk_file(o, "logits", 3)), [3]),
    "fill chunk written": (lambda o: shutil.copy(_chunk_file(o, "valid", 0), _chunk_file(o, "valid", 0).parent / "9"),
                           []),  # a file of no chunk is ignored
    "record {}": (lambda o: _record(o, 1).write_text("{}"), [1]),
    "record truncated": (lambda o: _truncate(_record(o, 0)), [0]),
    "record edited": (lambda o: _edit_record(o, 2, lambda r: r["rows"][0].update(prediction=7)), [2]),
    "record of another chunk": (lambda o: shutil.copy(_record(o, 0), _record(o, 3)), [3]),
    "record without checksums": (lambda o: _edit_record(o, 1, lambda r: (r.pop("files"), r.pop("seal"))), [1]),
    "record deleted": (lambda o: _record(o, 2).unlink(), []),  # not committed: done, not "redone"
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_damaged_chunks_are_redone_on_resume(npz, ref, run_copy, fault, capsys):
    damage, bad = FAULTS[fault]
    out = run_copy
    damage(out)
    assert explain(*_args(npz, out)) == 0
    err = capsys.readouterr().err
    counts = _manifest(out)["counts"]
    assert [r["chunk"] for r in counts["chunks_redone"]] == bad
    assert counts["chunks_this_invocation"] == len(bad) + (fault == "record deleted")
    for k in bad:
        assert f"redid chunk {k}: " in err
    _assert_same_results(out, ref)


def test_commit_record_holds_sizes_and_checksums(ref):
    import hashlib

    rec = json.loads(_record(ref, 1).read_text())
    assert rec["seal"] == store.seal(rec)["seal"]
    assert sorted(rec["files"]) == sorted(_arrays(ref))
    for name, f in rec["files"].items():
        p = ref / f["path"]
        assert p == _chunk_file(ref, name, 1)
        if f["size"] is None:  # a chunk of fill values only: zarr writes no file
            assert not p.exists()
        else:
            data = p.read_bytes()
            assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()


# -- item 4: a corrupt run.json is named, verify --repair restores it --------------------------

@pytest.mark.parametrize("fault", ["corrupt", "deleted, run not finished"])
def test_corrupt_run_json(npz, ref, run_copy, fault, capsys):
    out = run_copy
    if fault == "corrupt":
        (out / "run.json").write_text('{"format": "clear-na')
    else:
        (out / "run.json").unlink()
        (out / "manifest.json").unlink()
        _record(out, 3).unlink()
    assert explain(*_args(npz, out)) == 2
    err = capsys.readouterr().err
    assert f"run.json of {str(out)!r} is {'unreadable' if fault == 'corrupt' else 'missing'}" in err
    assert f"clear-native verify {out} --repair" in err and "holds no clear-native run" not in err
    rc, res = _verify(out, capsys=capsys)
    assert rc == 1 and "problem: run.json is" in res.out
    rc, res = _verify(out, "--repair", capsys=capsys)
    source = "manifest.json" if fault == "corrupt" else "arrays.json"
    assert f"repaired: restored run.json from {source}" in res.out
    assert rc == (0 if fault == "corrupt" else 1)
    assert explain(*_args(npz, out)) == 0
    assert _manifest(out)["counts"]["chunks_this_invocation"] == (0 if fault == "corrupt" else 1)
    _assert_same_results(out, ref)


def test_overwrite_replaces_a_run_with_a_corrupt_run_json(npz, ref, run_copy):
    (run_copy / "run.json").write_text("not json")
    assert explain(*_args(npz, run_copy, "--overwrite")) == 0
    _assert_same_results(run_copy, ref)


# -- item 2: --overwrite only replaces a run or an empty folder; never the data ---------------

@pytest.fixture
def png_folder(tmp_path):
    root = tmp_path / "pngs"
    for i, img in enumerate(_images(12, seed=2)[0]):
        d = root / str(i % 2)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(d / f"{i:02d}.png")
    return root


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def test_overwrite_refuses_a_folder_that_is_not_a_run(npz, tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (other / "pics").mkdir()
    for argv in ([], ["--overwrite"]):
        assert explain(*_args(npz, other, *argv)) == 2
        err = capsys.readouterr().err
        assert "notes.txt, pics" in err
        assert ("--overwrite only replaces a clear-native run or an empty folder" in err) == bool(argv)
        assert _files(other) == ["notes.txt", "pics"]  # not even a lock file
    empty = tmp_path / "empty"
    empty.mkdir()
    assert explain(*_args(npz, empty, "--overwrite")) == 0


def test_overwrite_deletes_only_what_a_run_wrote(npz, ref, run_copy):
    (run_copy / "notes.txt").write_text("mine")
    assert explain(*_args(npz, run_copy, "--method", "gradient", "--overwrite")) == 0
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert _manifest(run_copy)["counts"]["chunks_this_invocation"] == CHUNKS


@pytest.mark.parametrize("where", ["out is data", "out inside data", "data inside out"])
def test_out_and_data_must_not_overlap(png_folder, tmp_path, where, capsys):
    if where == "data inside out":
        out, data = tmp_path, png_folder
    else:
        out, data = (png_folder if where == "out is data" else png_folder / "results"), png_folder
    before = _files(png_folder)
    for argv in ([], ["--overwrite"]):
        rc = explain("--model", MODEL, "--data", data, "--out", out, "--batch-size", B, *argv)
        assert rc == 2
        err = capsys.readouterr().err
        assert {"out is data": "is --data", "out inside data": "lies inside --data",
                "data inside out": "contains --data"}[where] in err
        assert _files(png_folder) == before


# -- item 3: one writer at a time; the lock dies with its process -----------------------------

def test_lock_is_exclusive_and_released(tmp_path):
    a = store.OutLock.acquire(tmp_path)
    with pytest.raises(batch.BatchError, match=rf"is in use by another run \(pid {os.getpid()} on "):
        store.OutLock.acquire(tmp_path)
    a.release()
    store.OutLock.acquire(tmp_path).release()


def test_second_writer_is_refused_and_a_killed_writer_leaves_no_lock(npz, ref, tmp_path, capsys):
    out = tmp_path / "out"
    env = _env() | {"CLEAR_NATIVE_BATCH_TEST_DELAY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clear_native.cli", "explain", "--no-progress", *_args(npz, out)],
                            cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not _record(out, 0).exists():
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        for argv in ([], ["--overwrite"]):
            assert explain(*_args(npz, out, *argv)) == 2
            assert f"is in use by another run (pid {proc.pid} on " in capsys.readouterr().err
        rc, res = _verify(out, capsys=capsys)
        assert rc == 2 and f"in use by another run (pid {proc.pid}" in res.err
        assert _record(out, 0).exists()  # the refused runs deleted nothing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "manifest.json").exists()
    assert explain(*_args(npz, out)) == 0  # the lock went with the killed process
    _assert_same_results(out, ref)


# -- kills at each commit step; a full disk; an unwritable OUT --------------------------------
# Faults come in through the run's Files object (every write the store makes is one of its
# methods): a subclass raises where the fault would strike.

def _explain_with(files, *args) -> int:
    """``explain`` with the run's writes going through ``files``."""
    return batch.main(cli.build_parser().parse_args(["explain", "--no-progress", *map(str, args)]), files=files)


class _Killed(BaseException):
    pass


class _KillAt(store.Files):
    """Raises _Killed at ``step`` of chunk ``k``'s commit (what a kill there leaves)."""

    def __init__(self, step, k=2):
        self.step, self.k, self.calls = step, k, 0

    def write_chunk(self, array, start, stop, block):
        if self.step == "array write" and start == self.k * B:  # after some of the chunk's arrays were written
            self.calls += 1
            if self.calls == 3:
                raise _Killed
        super().write_chunk(array, start, stop, block)

    def commit_files(self, out, metas, k):
        files = super().commit_files(out, metas, k)
        if self.step == "before record" and k == self.k:  # arrays written and flushed, no record yet
            raise _Killed
        return files

    def write_json(self, path, obj):
        if self.step == "before rename" and path.name == f"{self.k:06d}.json":
            # the record's temporary file written, not renamed
            path.with_name(f".{path.name}.tmp{os.getpid()}").write_text(json.dumps(obj))
            raise _Killed
        super().write_json(path, obj)


@pytest.mark.parametrize("step", ["array write", "before record", "before rename"])
def test_kill_at_each_commit_step(npz, ref, tmp_path, step):
    out = tmp_path / "out"
    with pytest.raises(_Killed):
        _explain_with(_KillAt(step), *_args(npz, out))
    assert [_record(out, k).exists() for k in range(CHUNKS)] == [True, True, False, False]
    assert store.OutLock.acquire(out).release() is None  # the writer thread stopped, the lock is free
    assert explain(*_args(npz, out)) == 0
    assert _manifest(out)["counts"]["chunks_this_invocation"] == 2
    _assert_same_results(out, ref)


class _FailingChunks(store.Files):
    """Writes the arrays through a Zarr store that raises ``err`` on every key starting
    with ``prefix`` (as a full disk or a denied permission would, inside zarr)."""

    def __init__(self, prefix, err):
        self.prefix, self.err = prefix, err

    def zarr_store(self, root):
        prefix, err = self.prefix, self.err

        class Failing(zarr.storage.LocalStore):
            async def set(self, key, value):
                if key.startswith(prefix):
                    raise err
                return await super().set(key, value)

        return Failing(root)


def test_full_disk_keeps_the_committed_chunks(npz, ref, tmp_path, capsys):
    out = tmp_path / "out"
    full = _FailingChunks("dominant_response/c/2/", OSError(errno.ENOSPC, "No space left on device"))
    assert _explain_with(full, *_args(npz, out)) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write to --out {str(out)!r}: the disk is full" in err
    assert "the chunks committed so far are kept" in err and "Traceback" not in err
    assert [_record(out, k).exists() for k in range(CHUNKS)] == [True, True, False, False]
    assert store.check_chunk(out, 1, B, 2 * B, {n: zarr.open_array(str(out / "clear.zarr" / n)).metadata.to_dict()
                                                for n in _arrays(out)}) == ("ok", "")
    assert explain(*_args(npz, out)) == 0
    assert _manifest(out)["counts"]["chunks_this_invocation"] == 2
    _assert_same_results(out, ref)


class _FullAtTheTable(store.Files):
    def write_table(self, out, rows, fmt):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / ".table.parquet.tmp"))


def test_full_disk_at_the_table(npz, ref, tmp_path, capsys):
    out = tmp_path / "out"
    assert _explain_with(_FullAtTheTable(), *_args(npz, out)) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    assert explain(*_args(npz, out)) == 0
    assert _manifest(out)["counts"]["chunks_this_invocation"] == 0
    _assert_same_results(out, ref)


class _DeniedJson(store.Files):
    """Denies the JSON writes into ``folder`` (None: every one)."""

    def __init__(self, folder=None):
        self.folder = folder

    def write_json(self, path, obj):
        if self.folder is None or path.parent.name == self.folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        super().write_json(path, obj)


@pytest.mark.parametrize("where", ["run.json", "arrays", "commit record"])
def test_unwritable_out_is_a_clear_error(npz, tmp_path, where, capsys):
    out = tmp_path / "out"
    files = {"run.json": _DeniedJson(),  # run.json is the first file a run writes
             "arrays": _FailingChunks("dominant_class/c/0/", PermissionError(errno.EACCES, "Permission denied")),
             "commit record": _DeniedJson("chunks")}[where]
    assert _explain_with(files, *_args(npz, out)) == 2
    err = capsys.readouterr().err
    assert f"cannot write to --out {str(out)!r}: permission denied" in err and "Traceback" not in err


# -- RANK without a process group ------------------------------------------------------------

@pytest.mark.parametrize("env, message", [
    ({"RANK": "1"}, "RANK=1 with WORLD_SIZE=1 (unset: 1) is no process group"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR / MASTER_PORT not: there is no process group to join"),
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 with WORLD_SIZE=2"),
])
def test_rank_without_a_process_group(npz, tmp_path, monkeypatch, env, message, capsys):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert explain(*_args(npz, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "clear-native explain: error: " in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# -- clear-native verify [--repair] ----------------------------------------------------------

def test_verify_a_sound_run(ref, npz, tmp_path, capsys):
    rc, res = _verify(ref, capsys=capsys)
    assert rc == 0 and f"{ref}: ok: {CHUNKS} chunks" in res.out and "problem" not in res.out
    with_input = tmp_path / "with-input"  # the input pictures are one more array of the run
    assert explain(*_args(npz, with_input, "--store", "dominant,input")) == 0
    rc, res = _verify(with_input, capsys=capsys)
    assert rc == 0 and "problem" not in res.out, res.out
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in ((empty, "holds no clear-native run"), (tmp_path / "nothing", "is not a folder")):
        rc, res = _verify(folder, capsys=capsys)
        assert rc == 2 and message in res.err


def test_verify_finds_bad_chunks_and_repair_marks_them_for_redoing(npz, ref, run_copy, capsys):
    out = run_copy
    _truncate(_chunk_file(out, "dominant_class", 1))
    # a record edited and sealed again: the checksums hold, its rows disagree with the arrays
    _edit_record(out, 3, lambda r: r.update(store.seal(r | {"rows": [row | {"prediction": (row["prediction"] + 1) % 10}
                                                                     for row in r["rows"]]})))
    rc, res = _verify(out, capsys=capsys)
    assert rc == 1
    assert "problem: chunk 1 [12, 24): clear.zarr/dominant_class/c/1/0/0 has" in res.out
    assert "problem: chunk 3 [36, 48): its table rows disagree with the arrays" in res.out
    assert "2 of 4 chunks to (re)do: 1, 3" in res.out and "--repair" in res.out
    assert _record(out, 1).exists() and (out / "manifest.json").exists()  # verify alone changes nothing

    rc, res = _verify(out, "--repair", capsys=capsys)
    assert rc == 1 and "repaired: deleted the commit records of chunks 1, 3" in res.out
    assert "deleted manifest.json" in res.out
    cmd = res.out.splitlines()[-1].strip()
    assert cmd.startswith(f"clear-native explain --model {MODEL} --data {npz} --out {out} ")
    for part in ("--batch-size 12", "--store dominant,response", "--method lrp", "--signal logit"):
        assert part in cmd
    assert "--overwrite" not in cmd and "progress" not in cmd
    assert not _record(out, 1).exists() and not (out / "manifest.json").exists()

    assert explain(*_args(npz, out)) == 0
    assert _manifest(out)["counts"]["chunks_this_invocation"] == 2
    assert _verify(out, capsys=capsys)[0] == 0
    _assert_same_results(out, ref)


@pytest.mark.parametrize("fault", ["table deleted", "table corrupt", "table of another run", "errors.json edited"])
def test_verify_repairs_the_table(ref, run_copy, tmp_path, fault, capsys):
    out = run_copy
    table = out / "table.parquet"
    if fault == "table deleted":
        table.unlink()
    elif fault == "table corrupt":
        _truncate(table)
    elif fault == "table of another run":
        rows = _table(ref)
        rows[5]["prediction"] = 9 - rows[5]["prediction"]
        store.write_table(out, rows, "parquet")
    else:
        (out / "errors.json").write_text('[{"index": 3, "key": "3", "reason": "made up"}]')
    rc, res = _verify(out, capsys=capsys)
    assert rc == 1 and ("table.parquet is" if "table" in fault else "errors.json is") in res.out
    rc, res = _verify(out, "--repair", capsys=capsys)
    assert rc == 0 and "repaired: rewrote" in res.out
    _assert_same_results(out, ref)


def test_verify_repairs_metadata_from_its_copies(ref, run_copy, capsys):
    out = run_copy
    (out / "clear.zarr" / "dominant_class" / "zarr.json").write_text("{")
    (out / "clear.zarr" / "zarr.json").unlink()
    rc, res = _verify(out, capsys=capsys)
    assert rc == 1 and "problem: clear.zarr/dominant_class/zarr.json is unreadable" in res.out
    rc, res = _verify(out, "--repair", capsys=capsys)
    assert rc == 0 and "restored clear.zarr/dominant_class/zarr.json from arrays.json" in res.out
    _assert_same_results(out, ref)
    (out / "arrays.json").write_text("[")
    rc, res = _verify(out, "--repair", capsys=capsys)
    assert rc == 0 and "rebuilt arrays.json from the arrays" in res.out
    assert json.loads((out / "arrays.json").read_text()) == json.loads((ref / "arrays.json").read_text())


def test_verify_an_unfinished_run(npz, ref, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / "manifest.json").unlink()
    _record(out, 2).unlink()
    rc, res = _verify(out, capsys=capsys)
    assert rc == 1 and "1 of 4 chunks to (re)do: 2" in res.out and "problem" not in res.out
    assert explain(*_args(npz, out)) == 0
    assert _verify(out, capsys=capsys)[0] == 0
