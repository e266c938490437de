"""Inputs of batch explanation (``clear-native explain``): class sub-folders labelled by
name, the run's image shape by majority, non-finite images / logits flagged, a .pt2 model
only with --trust-model-code, --classes / --limit checked, unreadable data named, huge
images refused from their header, the data fingerprint stated (or by contents)."""
import json
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from clear_native import cli
from clear_native import io as cio
from batch_outputs import explain
from batch_outputs import read_arrays as _arrays
from batch_outputs import read_table as _table
from models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

zarr = pytest.importorskip("zarr")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

HERE = Path(__file__).resolve().parent
SIZE = 16
MODEL = "models:tiny_model"


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))




def _manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())


def _errors(out):
    return json.loads((Path(out) / "errors.json").read_text())


def _save_png(path: Path, size=SIZE, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(img, mode="L").save(path)


def _folder(root: Path, names, per_class=2) -> Path:
    for c, name in enumerate(names):
        for j in range(per_class):
            _save_png(root / name / f"{j}.png", seed=10 * c + j)
    return root


# -- item 5: class sub-folders labelled by name --------------------------------------------

def test_integer_class_folders_are_labelled_by_their_number(tmp_path):
    data = _folder(tmp_path / "data", ["3", "9", "10"])
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", data, "--out", out, "--batch-size", 8) == 0
    rows = _table(out)
    assert [r["label"] for r in rows] == [int(r["key"].split("/")[0]) for r in rows]
    assert sorted({r["label"] for r in rows}) == [3, 9, 10]
    np.testing.assert_array_equal(_arrays(out)["label"], [r["label"] for r in rows])
    manifest = _manifest(out)["data"]
    assert manifest["class_names"] is None
    assert "integer" in manifest["labels"] and "9/ is label 9" in manifest["labels"]


def test_named_class_folders_are_labelled_by_sorted_name(tmp_path):
    data = _folder(tmp_path / "data", ["dog", "ant", "cat", "7"])
    (data / "empty").mkdir()  # a folder without images is not a class: it shifts nothing
    _save_png(data / "top.png", seed=99)  # directly in DATA: no label
    source = cio.load_data(str(data))
    assert source.class_names == ["7", "ant", "cat", "dog"]
    want = {"7": 0, "ant": 1, "cat": 2, "dog": 3}
    assert [source.reader.label(i) for i in range(len(source))] == \
        [want.get(k.split("/")[0], -1) if "/" in k else -1 for k in source.keys]
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", data, "--out", out, "--table", "csv") == 0
    manifest = _manifest(out)["data"]
    assert manifest["class_names"] == ["7", "ant", "cat", "dog"]
    assert "sorted" in manifest["labels"]


def test_folder_label_rule():
    assert cio.folder_labels(["9"])[0] == {"9": 9}
    assert cio.folder_labels(["0", "2", "10"])[:2] == ({"0": 0, "2": 2, "10": 10}, None)
    # not all integers, negative, or two names for one number: sorted names
    assert cio.folder_labels(["10", "9", "x"])[:2] == ({"10": 0, "9": 1, "x": 2}, ["10", "9", "x"])
    assert cio.folder_labels(["-1", "3"])[1] == ["-1", "3"]
    assert cio.folder_labels(["7", "07"])[1] == ["07", "7"]


# -- item 6: the run's image shape is the most common one ------------------------------------

def test_a_stray_image_sorting_first_does_not_fix_the_shape(tmp_path, capsys):
    data = tmp_path / "data"
    _save_png(data / "000_stray.png", size=8)
    for j in range(12):
        _save_png(data / f"img_{j:02d}.png", seed=j)
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", data, "--out", out, "--batch-size", 8) == 3
    assert "13 images (12 explained, 1 errors)" in capsys.readouterr().err
    (err,) = _errors(out)
    assert err["key"] == "000_stray.png"
    assert "(1, 8, 8) differs from the run's (1, 16, 16)" in err["reason"]
    assert _manifest(out)["shapes"]["image"] == [1, SIZE, SIZE]


# -- item 9: NaN / inf pixels and logits are flagged ----------------------------------------

def test_non_finite_pixels_are_flagged_not_predicted(tmp_path):
    images = np.random.default_rng(0).random((6, SIZE, SIZE), dtype=np.float32)
    images[2, 3, 4] = np.nan
    images[4, 0, 0] = np.inf
    data, out = tmp_path / "d.npz", tmp_path / "out"
    np.savez(data, images=images)
    assert explain("--model", MODEL, "--data", data, "--out", out) == 3
    a, rows = _arrays(out), _table(out)
    assert a["valid"].tolist() == [True, True, False, True, False, True]
    assert [r["valid"] for r in rows] == a["valid"].tolist()
    assert a["prediction"][2] == a["prediction"][4] == -1
    assert np.isnan(a["logits"][[2, 4]]).all() and (a["dominant_class"][[2, 4]] == -1).all()
    reasons = {e["index"]: e["reason"] for e in _errors(out)}
    assert sorted(reasons) == [2, 4]
    assert "1 NaN and 0 infinite values" in reasons[2] and "0 NaN and 1 infinite values" in reasons[4]


def test_non_finite_logits_are_flagged(tmp_path):
    images = np.random.default_rng(1).random((5, SIZE, SIZE), dtype=np.float32)
    images[3] = 3e38  # finite, but the convolutions overflow
    x = torch.from_numpy(images)[:, None]
    assert torch.isfinite(tiny_model()(x)[[0, 1, 2, 4]]).all()
    assert not torch.isfinite(tiny_model()(x)[3]).all()
    data, out = tmp_path / "d.npz", tmp_path / "out"
    np.savez(data, images=images)
    assert explain("--model", MODEL, "--data", data, "--out", out, "--batch-size", 4) == 3
    a, rows = _arrays(out), _table(out)
    assert a["valid"].tolist() == [True, True, True, False, True]
    assert rows[3]["valid"] is False and rows[3]["prediction"] == -1
    assert "logits for this image are not finite" in rows[3]["error"]
    assert [e["index"] for e in _errors(out)] == [3]
    assert (a["dominant_class"][3] == -1).all() and (a["dominant_class"][[0, 1, 2, 4]] >= 0).all()


# -- item 10: .pt2 files only with --trust-model-code ---------------------------------------

def _export(path: Path) -> Path:
    ep = torch.export.export(tiny_model(), (torch.zeros(2, 1, SIZE, SIZE),),
                             dynamic_shapes=({0: torch.export.Dim("n")},))
    torch.export.save(ep, str(path))
    return path


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copies a .pt2 archive, ``change(name, bytes) -> bytes`` for each record."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info.filename)))
    return dst


class _Marker:
    """Unpickling it creates the file ``path`` (stands in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _with_sympy_payload(src: Path, dst: Path, marker: Path) -> Path:
    """Plain tensor weights; a shape expression that sympy.sympify evaluates."""
    def change(name, data):
        if not name.endswith("models/model.json"):
            return data
        j = json.loads(data)
        sizes = j["graph_module"]["graph"]["tensor_values"]["relu"]["sizes"][0]["as_expr"]
        sizes["expr_str"] = f"exec(\"open({str(marker)!r}, 'w')\") or {sizes['expr_str']}"
        return json.dumps(j).encode()
    return _rewrite(src, dst, change)


def _with_pickled_weight(src: Path, dst: Path, marker: Path) -> Path:
    import io

    def change(name, data):
        if name.endswith("model_weights_config.json"):
            j = json.loads(data)
            j["config"]["0.weight"]["use_pickle"] = True
            return json.dumps(j).encode()
        if name.endswith("data/weights/weight_0"):
            buf = io.BytesIO()
            torch.save(_Marker(marker), buf)
            return buf.getvalue()
        return data
    return _rewrite(src, dst, change)


@pytest.mark.parametrize("payload", ["sympy", "pickle"])
def test_crafted_pt2_runs_no_code_without_the_flag(tmp_path, capsys, payload):
    marker = tmp_path / "ran"
    make = _with_sympy_payload if payload == "sympy" else _with_pickled_weight
    evil = make(_export(tmp_path / "good.pt2"), tmp_path / "evil.pt2", marker)
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((2, SIZE, SIZE), np.uint8))
    rc = explain("--model", evil, "--data", data, "--out", tmp_path / "out")
    assert not marker.exists(), "loading the file ran its code"
    assert rc == 2
    err = capsys.readouterr().err
    assert "can run code when it is loaded" in err and "--trust-model-code" in err
    assert not (tmp_path / "out").exists()


def test_crafted_pt2_is_code_even_with_tensor_weights(tmp_path):
    """Why every .pt2 needs the flag: weights that are plain tensors do not make it safe."""
    marker = tmp_path / "ran"
    evil = _with_sympy_payload(_export(tmp_path / "good.pt2"), tmp_path / "evil.pt2", marker)
    with zipfile.ZipFile(evil) as z:
        config = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("weights_config.json")))
    assert not any(v["use_pickle"] for v in config["config"].values())
    with pytest.warns(cio.ModelCodeWarning):
        try:
            cio.load_model(str(evil), trust_code=True)
        except cio.BatchError:
            pass
    assert marker.exists()


def test_pt2_loads_with_the_flag_and_a_warning(tmp_path, capsys):
    model = _export(tmp_path / "tiny.pt2")
    data, out = tmp_path / "d.npz", tmp_path / "out"
    images = np.random.default_rng(2).integers(0, 256, (6, SIZE, SIZE), dtype=np.uint8)
    np.savez(data, images=images)
    common = ["--model", model, "--data", data, "--method", "gradient", "--signal", "logit"]
    assert explain(*common, "--out", out) == 2
    assert "--trust-model-code" in capsys.readouterr().err and not out.exists()
    with pytest.warns(cio.ModelCodeWarning, match="trust-model-code"):
        assert explain(*common, "--out", out, "--trust-model-code") == 0
    manifest = _manifest(out)
    assert manifest["model"]["kind"] == "export" and manifest["arguments"]["trust_model_code"] is True
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    np.testing.assert_array_equal(_arrays(out)["prediction"], tiny_model()(x).argmax(1).numpy())


def test_help_names_the_inputs_that_run_code(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Inputs that run code: a package.module:factory (--model) or package.module:function (--data) always" in text
    assert "--trust-model-code" in text and "TorchScript file runs its own TorchScript program" in text
    assert "uses file metadata (path, size, modification time), not contents, unless --hash-data" in text


# -- clear errors instead of tracebacks ------------------------------------------------------

@pytest.mark.parametrize("classes, message", [
    ("12", "class id(s) [12] out of range: the model has 10 classes (ids 0 to 9)"),
    ("3,10,11", "class id(s) [10, 11] out of range"),
    ("1,2,1", "class id(s) [1] given more than once"),
    ("-1,2", "class ids are >= 0, got [-1]"),
    ("top-11", "K = 11 is more than the model's 10 classes"),
])
def test_bad_class_lists_are_usage_errors(tmp_path, capsys, classes, message):
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((3, SIZE, SIZE), np.uint8))
    assert explain("--model", MODEL, "--data", data, "--out", tmp_path / "out", f"--classes={classes}") == 2
    err = capsys.readouterr().err
    assert f"clear-native explain: error: --classes {classes!r}: {message}" in err
    assert not (tmp_path / "out").exists()


def test_top_k_equal_to_c_is_accepted(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((3, SIZE, SIZE), np.uint8))
    assert explain("--model", MODEL, "--data", data, "--out", tmp_path / "out", "--classes", "top-10",
                   "--method", "cam") == 0


@pytest.mark.parametrize("limit", ["0", "-2", "x"])
def test_evaluate_limit_must_be_positive(capsys, limit):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--limit", limit, "--out", "unused"])
    assert e.value.code == 2
    assert "argument --limit: expected an integer >= 1" in capsys.readouterr().err


def test_no_readable_image_names_the_first_reasons(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (data / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert explain("--model", MODEL, "--data", data, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no image of DATA could be read (4 of 4 items failed; first: a.png: " in err
    assert "b.png: " in err and "c.png: " in err and "d.png" not in err
    assert "cannot identify image file" in err


def _png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 8-bit grayscale PNG, written without holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_huge_png_is_refused_from_its_header(tmp_path):
    path = _png(tmp_path / "bomb.png", 12000, 12000)
    assert path.stat().st_size < 200_000  # 144 megapixels in a small file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow only warns
        with Image.open(path) as img:
            assert img.size == (12000, 12000)
    reader = cio._FolderReader([str(path)], [-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning is not the check
        with pytest.raises(ValueError, match=r"12000 x 12000 = 144000000 pixels, above the limit of "
                                             rf"{cio.MAX_PIXELS} \(--max-pixels\); not decoded"):
            reader.read(0)
    assert cio.MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # below Pillow's warning threshold


def test_max_pixels_option(tmp_path):
    data = tmp_path / "data"
    for j in range(4):
        _save_png(data / f"{j}.png", seed=j)
    _save_png(data / "big.png", size=40)
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", data, "--out", out, "--max-pixels", 1000) == 3
    (err,) = _errors(out)
    assert err["key"] == "big.png"
    assert "40 x 40 = 1600 pixels, above the limit of 1000 (--max-pixels); not decoded" in err["reason"]
    assert explain("--model", MODEL, "--data", data, "--out", tmp_path / "o2", "--max-pixels", -1) == 2


def test_fingerprint_states_metadata_or_hashes_contents(tmp_path):
    data = tmp_path / "data"
    _save_png(data / "a.png", seed=1)
    _save_png(data / "b.png", seed=2)
    meta, content = cio.load_data(str(data)), cio.load_data(str(data), hash_contents=True)
    assert "metadata" in meta.fingerprint_of and "--hash-data" in meta.fingerprint_of
    assert "contents" in content.fingerprint_of
    # an edit that keeps the size and modification time: only --hash-data sees it
    st = (data / "a.png").stat()
    raw = bytearray((data / "a.png").read_bytes())
    raw[-20] ^= 0xFF
    (data / "a.png").write_bytes(bytes(raw))
    os.utime(data / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cio.load_data(str(data)).fingerprint == meta.fingerprint
    assert cio.load_data(str(data), hash_contents=True).fingerprint != content.fingerprint
    out = tmp_path / "out"
    assert explain("--model", MODEL, "--data", data, "--out", out, "--hash-data") in (0, 3)
    manifest = _manifest(out)["data"]
    assert manifest["fingerprint"] == cio.load_data(str(data), hash_contents=True).fingerprint
    assert manifest["fingerprint_of"] == content.fingerprint_of
