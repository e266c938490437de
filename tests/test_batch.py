"""Batch explanation (``clear-native explain``): results equal the Python API's, runs
resume after a SIGKILL with identical results, unreadable images are skipped and
reported, torchrun with 2 processes equals 1 process, bad arguments fail clearly."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import clear_native
from clear_native import cli
from batch_outputs import explain
from batch_outputs import read_arrays as _arrays
from batch_outputs import read_table as _table
from models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

zarr = pytest.importorskip("zarr")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

HERE = Path(__file__).resolve().parent
N_IMAGES, SIZE, BATCH = 192, 16, 24  # 8 chunks
MODEL = "models:tiny_model"


def _images(n=N_IMAGES, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    images, labels = _images()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """60 PNGs in class sub-folders, one corrupt file and one of another size."""
    root = tmp_path_factory.mktemp("folder")
    images, _ = _images(60, seed=1)
    for i, img in enumerate(images):
        d = root / ("cat" if i % 2 else "dog")
        d.mkdir(exist_ok=True)
        Image.fromarray(img, mode="L").save(d / f"{i:03d}.png")
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(root / "cat" / "small.png")
    return root




def _assert_same_results(a, b):
    xa, xb = _arrays(a), _arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)
    assert _table(a) == _table(b)
    assert json.loads((Path(a) / "errors.json").read_text()) == json.loads((Path(b) / "errors.json").read_text())


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture(scope="module")
def reference_run(npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    rc = explain("--model", MODEL, "--data", npz, "--out", out, "--batch-size", BATCH,
                 "--store", "dominant,response,runner_up,focus,weakest", "--response-dtype", "float32")
    assert rc == 0
    return out


def test_results_equal_python_api(npz, reference_run):
    images, labels = _images()
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    explainer = clear_native.Clear(tiny_model())  # the CLI's default method
    maps = [explainer(x[s:s + BATCH]) for s in range(0, N_IMAGES, BATCH)]
    cat = {f: torch.cat([getattr(m, f) for m in maps]).numpy()
           for f in ("dominant_class", "dominant_response", "runner_up_class", "runner_up_response",
                     "weakest_class", "weakest_response", "target_response", "rival_class",
                     "rival_response", "prediction", "target", "logits")}
    got = _arrays(reference_run)
    assert got["dominant_class"].dtype == np.int8 and got["dominant_response"].dtype == np.float32
    for f, want in cat.items():
        np.testing.assert_array_equal(got[f], want.astype(got[f].dtype), err_msg=f)
    np.testing.assert_array_equal(got["label"], labels)
    assert got["valid"].all()

    rows = _table(reference_run)
    assert [r["index"] for r in rows] == list(range(N_IMAGES))
    dc, pred = cat["dominant_class"], cat["prediction"]
    for i in (0, 17, N_IMAGES - 1):
        share = (dc[i] == pred[i]).mean()
        assert rows[i]["prediction_share"] == pytest.approx(share, abs=1e-6)
        counts = np.bincount(dc[i].ravel(), minlength=10)
        assert rows[i]["dominant_classes"] == np.nonzero(counts)[0].tolist()
        assert rows[i]["top_dominant"] == counts.argmax()
        assert rows[i]["agrees"] == (counts.argmax() == pred[i])
        assert rows[i]["label"] == labels[i] and rows[i]["prediction"] == pred[i]
        dr = cat["dominant_response"][i]
        strong = dr >= 0.1 * dr.max()
        assert rows[i]["strong_share"] == pytest.approx(strong.mean(), abs=1e-6)
        assert rows[i]["prediction_share_strong"] == pytest.approx((dc[i][strong] == pred[i]).mean(), abs=1e-6)

    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["counts"]["images"] == N_IMAGES and manifest["counts"]["errors"] == 0
    assert manifest["versions"]["torch"] == torch.__version__
    assert len(manifest["model"]["fingerprint"]) == 64 and len(manifest["data"]["fingerprint"]) == 64
    t = manifest["timings"]
    assert t["explain_s"] > 0 and 0 <= t["outside_explain_share"] <= 1

    # float16 responses by default, opened lazily as whole arrays
    assert zarr.open(str(reference_run / "clear.zarr" / "dominant_class")).shape == (N_IMAGES, SIZE, SIZE)


def test_rerun_of_complete_run_is_a_no_op(npz, reference_run, tmp_path, capsys):
    rc = explain("--model", MODEL, "--data", npz, "--out", reference_run, "--batch-size", BATCH,
                 "--store", "dominant,response,runner_up,focus,weakest", "--response-dtype", "float32")
    assert rc == 0
    assert f"chunks 0 of {N_IMAGES // BATCH} run now" in capsys.readouterr().err


def test_folder_with_unreadable_images(folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = explain("--model", MODEL, "--data", folder, "--out", out, "--batch-size", 16, "--table", "csv",
                 "--workers", 1)
    assert rc == 3
    err = capsys.readouterr().err
    assert "62 images (60 explained, 2 errors)" in err
    errors = json.loads((out / "errors.json").read_text())
    assert sorted(e["key"] for e in errors) == ["cat/small.png", "dog/bad.png"]
    assert "differs from the run's" in next(e["reason"] for e in errors if e["key"] == "cat/small.png")
    a = _arrays(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["class_names"] == ["cat", "dog"]
    assert manifest["counts"]["errors"] == 2 and manifest["errors"] == errors
    import csv

    rows = list(csv.DictReader(open(out / "table.csv")))
    assert len(rows) == 62
    for i, r in enumerate(rows):
        bad = r["key"] in ("cat/small.png", "dog/bad.png")
        assert a["valid"][i] == (not bad)
        assert a["label"][i] == (0 if r["key"].startswith("cat/") else 1)
        if bad:
            assert (a["dominant_class"][i] == -1).all() and a["prediction"][i] == -1
            assert r["error"]
        else:
            assert (a["dominant_class"][i] >= 0).all()


def test_kill_and_resume_gives_identical_results(npz, reference_run, tmp_path):
    out = tmp_path / "out"
    args = ["--model", MODEL, "--data", str(npz), "--out", str(out), "--batch-size", str(BATCH),
            "--store", "dominant,response,runner_up,focus,weakest", "--response-dtype", "float32"]
    env = _env() | {"CLEAR_NATIVE_BATCH_TEST_DELAY": "0.5"}  # slow commits: the kill lands mid-run
    proc = subprocess.Popen([sys.executable, "-m", "clear_native.cli", "explain", "--no-progress", *args],
                            cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "chunks").glob("0*.json"))) >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.25)  # lands between a chunk's array write and its commit record, or just after
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    committed = len(list((out / "chunks").glob("0*.json")))
    assert 2 <= committed < N_IMAGES // BATCH
    assert not (out / "manifest.json").exists()

    assert explain(*args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["chunks_this_invocation"] == N_IMAGES // BATCH - committed
    _assert_same_results(out, reference_run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equals_one(npz, reference_run, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "clear_native.cli", "explain", "--no-progress", "--model", MODEL, "--data", str(npz),
           "--out", str(out), "--batch-size", str(BATCH),
           "--store", "dominant,response,runner_up,focus,weakest", "--response-dtype", "float32"]
    res = subprocess.run(cmd, cwd=HERE, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["world_size"] == 2
    _assert_same_results(out, reference_run)


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_saved_model_files(tmp_path, fmt):
    if fmt == "torchscript":
        path = tmp_path / "tiny.pt"
        torch.jit.script(tiny_model()).save(str(path))
    else:
        path = tmp_path / "tiny.pt2"
        torch.export.save(torch.export.export(tiny_model(), (torch.zeros(2, 1, SIZE, SIZE),),
                                              dynamic_shapes=({0: torch.export.Dim("n")},)), str(path))
    out, data = tmp_path / "out", tmp_path / "d.npz"
    images = _images(48)[0]
    np.savez(data, images=images)
    # --signal logit: the response signal needs the feature map entering the global
    # pooling, which a TorchScript / exported graph does not expose as a module
    trust = ["--trust-model-code"] if fmt == "export" else []  # a .pt2 file can run code
    assert explain("--model", path, "--data", data, "--out", out, "--batch-size", 32,
                   "--method", "gradient", "--signal", "logit", "--classes", "top-3", *trust) == 0
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    explainer = clear_native.Clear(tiny_model(), method="gradient", signal="logit")
    want = torch.cat([explainer(x[s:s + 32], classes=3).dominant_class for s in range(0, 48, 32)])
    np.testing.assert_array_equal(_arrays(out)["dominant_class"], want.numpy())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["kind"] == fmt


def test_builtin_model_and_sample(tmp_path):
    have = "mnist" in clear_native.available_models() and clear_native.data.sample_path("mnist").is_file()
    if not have:
        pytest.skip("this build ships no MNIST weights / sample")
    out = tmp_path / "out"
    assert explain("--out", out, "--method", "cam", "--batch-size", 128) == 0
    sample = clear_native.load_sample("mnist")
    x = torch.from_numpy(sample.images.astype(np.float32) / 255.0)[:, None]
    explainer = clear_native.Clear(clear_native.load_pretrained("mnist"), method="cam")
    want = torch.cat([explainer(x[s:s + 128]).dominant_class for s in range(0, len(x), 128)])
    got = _arrays(out)
    np.testing.assert_array_equal(got["dominant_class"], want.numpy())
    np.testing.assert_array_equal(got["label"], sample.labels)
    assert _table(out)[0]["key"] == f"mnist-test:{int(sample.index[0])}"


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_module:f"], "cannot import module 'no_such_module'"),
    (["--model", "test_batch:nothing_here"], "has no attribute 'nothing_here'"),
    (["--model", "missing_file.pt"], "no such file"),
    (["--data", "/no/such/folder"], "no such folder or file"),
    (["--classes", "top-x"], "top-K needs an integer"),
    (["--store", "dominant,colours"], "unknown item(s) ['colours']"),
])
def test_bad_arguments(npz, tmp_path, capsys, argv, message):
    base = {"--model": MODEL, "--data": str(npz)}
    for k, v in zip(argv[::2], argv[1::2]):
        base[k] = v
    args = [a for kv in base.items() for a in kv]
    assert explain(*args, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "clear-native explain: error:" in err and message in err


def test_out_holding_a_different_run_is_refused(tmp_path, capsys):
    small, other_data = tmp_path / "small.npz", tmp_path / "other.npz"
    np.save(tmp_path / "small.npy", _images(24)[0])
    np.savez(small, images=_images(24)[0])
    np.savez(other_data, images=_images(24, seed=5)[0])
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", small, "--out", out, "--method", "gradient") == 0
    assert explain("--model", MODEL, "--data", other_data, "--out", out, "--method", "gradient") == 2
    assert "holds a different run (differs in: data)" in capsys.readouterr().err
    assert explain("--model", MODEL, "--data", small, "--out", out, "--method", "cam") == 2
    assert "differs in: method" in capsys.readouterr().err
    assert explain("--model", MODEL, "--data", tmp_path / "small.npy", "--out", out, "--method", "cam",
                   "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["data"]["kind"] == "npy"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert explain("--model", MODEL, "--data", small, "--out", other) == 2
    assert "holds no clear-native run" in capsys.readouterr().err
    assert (other / "notes.txt").exists()


def test_png_with_a_renderer(tmp_path):
    from clear_native.batch import BatchOptions, run

    def render(maps, num_classes=None):  # stands in for clear_native.render.render
        rgb = (maps.dominant_class.clamp(min=0) * 25).to(torch.uint8)
        return torch.stack([rgb, rgb, rgb], -1)

    data = tmp_path / "d.npz"
    np.savez(data, images=_images(20)[0])
    out = tmp_path / "out"
    o = BatchOptions(out=str(out), model=MODEL, data=str(data), method="cam", store=("dominant", "png"),
                     progress=False)
    assert run(o, renderer=render).exit_code == 0
    pngs = sorted((out / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:07d}.png" for i in range(20)]
    dc = _arrays(out)["dominant_class"]
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[3]))[..., 0], dc[3].clip(0).astype(np.uint8) * 25)


def test_png_with_the_built_in_renderer(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, images=_images(12)[0])
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", data, "--out", out, "--method", "cam", "--store", "dominant,png") == 0
    pngs = sorted((out / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:07d}.png" for i in range(12)]
    assert np.asarray(Image.open(pngs[0])).shape == (SIZE, SIZE, 3)


def test_class_list(tmp_path):
    data, out = tmp_path / "d.npz", tmp_path / "out"
    images = _images(40)[0]
    np.savez(data, images=images)
    assert explain("--model", MODEL, "--data", data, "--out", out, "--classes", "0,2,4",
                   "--store", "dominant,focus", "--response-dtype", "float32") == 0
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    model = tiny_model()
    target = torch.tensor([0, 2, 4])[model(x)[:, [0, 2, 4]].argmax(1)]
    want = clear_native.Clear(model)(x, target, classes=[0, 2, 4])
    got = _arrays(out)
    assert set(np.unique(got["dominant_class"])) <= {0, 2, 4}
    for f in ("dominant_class", "target", "target_response", "rival_class", "prediction"):
        np.testing.assert_array_equal(got[f], getattr(want, f).detach().numpy().astype(got[f].dtype), err_msg=f)


# -- --signal -----------------------------------------------------------------------------

def _small_npz(tmp_path, n=24):
    images = _images(n, seed=3)[0]
    path = tmp_path / "small.npz"
    np.savez(path, images=images)
    return path, torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]


def _recorded_signal(out):
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    run_json = json.loads((Path(out) / "run.json").read_text())
    assert manifest["arguments"]["signal"] == manifest["identity"]["signal"] == run_json["signal"]
    return manifest["arguments"]["signal"]


def test_signal_recorded_and_passed_through(tmp_path):
    data, x = _small_npz(tmp_path)
    common = ["--model", MODEL, "--data", data, "--batch-size", 24, "--response-dtype", "float32",
              "--method", "deconvnet"]
    default, logit, cam = tmp_path / "default", tmp_path / "logit", tmp_path / "cam"
    assert explain(*common, "--out", default) == 0
    assert explain(*common, "--out", logit, "--signal", "logit") == 0
    assert explain(*common[:-2], "--out", cam, "--method", "cam") == 0
    assert _recorded_signal(default) == clear_native.explain.DEFAULT_SIGNAL["deconvnet"] == "response"
    assert _recorded_signal(logit) == "logit"
    assert _recorded_signal(cam) is None

    got, base = _arrays(logit), _arrays(default)
    want = clear_native.Clear(tiny_model(), "deconvnet", signal="logit")(x)
    assert want.signal == "logit"
    for f in ("dominant_class", "dominant_response", "prediction", "logits"):
        np.testing.assert_array_equal(got[f], getattr(want, f).detach().numpy().astype(got[f].dtype), err_msg=f)
    # the flag reaches Clear: the logit maps are not the default (response) maps
    assert not np.array_equal(got["dominant_response"], base["dominant_response"])
    assert (got["dominant_class"] != base["dominant_class"]).any()
    np.testing.assert_array_equal(got["prediction"], base["prediction"])


def _snapshot(out):
    return {str(p.relative_to(out)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(Path(out).rglob("*"))}


def test_resume_with_another_signal_is_refused(tmp_path, capsys):
    data, _ = _small_npz(tmp_path)
    out = tmp_path / "out"
    common = ["--model", MODEL, "--data", data, "--out", out, "--batch-size", 12, "--method", "deconvnet"]
    assert explain(*common) == 0
    capsys.readouterr()
    # the explicit default is the same run: resumed (nothing left to do)
    assert explain(*common, "--signal", "response") == 0
    assert "chunks 0 of 2 run now" in capsys.readouterr().err
    before = _snapshot(out)
    assert explain(*common, "--signal", "logit") == 2
    err = capsys.readouterr().err
    assert "holds a different run (differs in: signal): signal \"response\" in OUT, \"logit\" now" in err
    assert "--overwrite" in err
    assert _snapshot(out) == before
    # the message names every differing field with both values
    assert explain(*common, "--method", "cam") == 2
    assert ("differs in: method, signal): method \"deconvnet\" in OUT, \"cam\" now, "
            "signal \"response\" in OUT, null now") in capsys.readouterr().err
    assert _snapshot(out) == before
    assert explain(*common, "--signal", "logit", "--overwrite") == 0
    assert _recorded_signal(out) == "logit"


def test_signal_with_cam_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", _small_npz(tmp_path)[0], "--out", out,
                   "--method", "cam", "--signal", "logit") == 2
    err = capsys.readouterr().err
    assert "clear-native explain: error: --signal applies to the back-projection methods" in err
    assert "--method cam" in err
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["explain", "--out", str(out), "--signal", "colour"])
    assert e.value.code == 2
    assert "invalid choice: 'colour'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    help_text = capsys.readouterr().out
    assert "\n                        response: the class map's rectified response" in help_text
    assert "\n                        logit: the class logit (default of lrp" in help_text


def test_explainer_hook_and_signal(tmp_path):
    from clear_native.batch import BatchError, BatchOptions, run

    data, x = _small_npz(tmp_path, 12)
    calls = []

    def hook(model, method):  # the (model, method) hook of earlier releases
        calls.append(method)
        return clear_native.Clear(model, method)

    o = BatchOptions(out=str(tmp_path / "a"), model=MODEL, data=str(data), batch_size=12, progress=False,
                     method="deconvnet")
    assert run(o, explainer=hook).exit_code == 0 and calls == ["deconvnet"]
    assert _recorded_signal(tmp_path / "a") == "response"
    # a hook whose explainer back-projects another signal than the run records is refused
    o = BatchOptions(out=str(tmp_path / "b"), model=MODEL, data=str(data), batch_size=12, progress=False,
                     signal="logit", method="deconvnet")
    with pytest.raises(BatchError, match="back-projects signal 'response', but the run's signal is 'logit'"):
        run(o, explainer=hook)
    assert run(o, explainer=lambda m, method: clear_native.Clear(m, method, signal="logit")).exit_code == 0
    assert _recorded_signal(tmp_path / "b") == "logit"


def test_model_the_explainer_cannot_explain_is_a_usage_error(tmp_path):
    from clear_native.batch import BatchError, BatchOptions, run

    def hook(model, method):
        def explain(images, target=None, classes=None):
            raise ValueError("signal='response' needs the last spatial feature map")
        return explain

    o = BatchOptions(out=str(tmp_path / "out"), model=MODEL, data=str(_small_npz(tmp_path, 4)[0]), progress=False)
    with pytest.raises(BatchError, match="cannot explain this model with these options .*feature map"):
        run(o, explainer=hook)
    assert not (tmp_path / "out").exists()
