"""Inputs the ecosystem's way (``clear-native explain``): a preprocess receives PIL images,
``--preprocess imagenet`` / ``module:callable`` / ``none``, ``--model torchvision.models:NAME``
and ``timm:NAME`` with ``--weights FILE``, photos of mixed sizes, and messages that name
the reasons of failed items."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from clear_native import cli
from clear_native import io as cio
from models import rgb_model

pytest.importorskip("zarr")
pytest.importorskip("pyarrow")
Image = pytest.importorskip("PIL.Image")

HERE = Path(__file__).resolve().parent
SEEN: list = []  # types handed to recording_preprocess


def recording_preprocess(img):
    """A torchvision-style preprocess: takes a PIL image, returns (3, 32, 32)."""
    SEEN.append(type(img).__name__)
    if not isinstance(img, Image.Image):
        raise TypeError(f"pic should be PIL Image, got {type(img).__name__}")
    img = img.convert("RGB").resize((32, 32), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)


def failing_preprocess(img):
    raise ValueError("this preprocess refuses every image")


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    SEEN.clear()


def explain(*args) -> int:
    return cli.main(["explain", "--no-progress", *map(str, args)])


def _photo(path: Path, size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = (127 + 100 * np.sin(xx / 9.0 + seed) * np.cos(yy / 7.0)).astype(np.uint8)
    arr = np.stack([base, np.roll(base, 5, 1), 255 - base], -1) if mode != "L" else base
    arr = np.clip(arr.astype(int) + rng.integers(0, 20, arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    img = img.convert(mode) if mode not in ("RGB", "L") else img
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def photos(tmp_path):
    """Photos of mixed sizes and modes in two class folders."""
    root = tmp_path / "photos"
    specs = [((300, 200), "RGB"), ((180, 260), "L"), ((64, 64), "RGBA"), ((500, 375), "RGB"),
             ((256, 256), "P"), ((231, 400), "RGB")]
    for k, (size, mode) in enumerate(specs):
        _photo(root / ("cat" if k % 2 else "dog") / f"{k}.png", size, mode, seed=k)
    _photo(root / "dog" / "6.jpg", (320, 240), "RGB", seed=6)
    return root


def _manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


# -- the ImageNet preprocess ---------------------------------------------------------------

def test_imagenet_geometry_and_normalisation():
    pre = cio.ImagenetPreprocess()
    img = Image.new("RGB", (500, 375), (200, 100, 50))
    out = pre(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    want = (torch.tensor([200, 100, 50]) / 255.0 - torch.tensor(cio.IMAGENET_MEAN)) / torch.tensor(cio.IMAGENET_STD)
    torch.testing.assert_close(out.mean((1, 2)), want, atol=1e-5, rtol=0)
    # the shorter side to 256 (int() of the longer, as torchvision), then the centre 224
    assert pre._size(375, 500) == (256, 341) and pre._size(400, 231) == (443, 256)
    assert pre._offsets(256, 341) == (16, 58)


def test_imagenet_matches_resize_then_crop_by_hand():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    got = cio.ImagenetPreprocess(normalize=False)(img)
    ref = np.asarray(img.resize((341, 256), Image.BILINEAR).crop((58, 16, 58 + 224, 16 + 224)), np.float32) / 255
    torch.testing.assert_close(got, torch.from_numpy(ref).permute(2, 0, 1))
    # a uint8 array is the same picture as its PIL image
    torch.testing.assert_close(cio.ImagenetPreprocess()(arr), cio.ImagenetPreprocess()(img))


def test_imagenet_grey_alpha_and_tensors():
    pre = cio.ImagenetPreprocess(normalize=False)
    grey = Image.fromarray(np.full((100, 120), 77, np.uint8), mode="L")
    out = pre(grey)
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out[0], out[2])
    rgba = Image.new("RGBA", (260, 300), (10, 20, 30, 5))
    assert pre(rgba).shape == (3, 224, 224)
    # float tensors go through torch's antialiased interpolation: close to Pillow's
    yy, xx = np.mgrid[0:375, 0:500]
    smooth = (127 + 100 * np.sin(xx / 40.0) * np.cos(yy / 30.0)).astype(np.uint8)
    arr = np.stack([smooth, smooth[::-1], 255 - smooth], -1)
    from_pil = pre(Image.fromarray(arr))
    from_tensor = pre(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert from_tensor.shape == (3, 224, 224)
    assert float((from_pil - from_tensor).abs().mean()) < 0.01
    assert pre(torch.from_numpy(arr).permute(2, 0, 1)).shape == (3, 224, 224)  # uint8 tensor


def test_imagenet_equals_torchvision():
    T = pytest.importorskip("torchvision.transforms")
    tv = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize(cio.IMAGENET_MEAN, cio.IMAGENET_STD)])
    rng = np.random.default_rng(1)
    for size in ((500, 375), (231, 400), (256, 256), (300, 299)):
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        torch.testing.assert_close(cio.ImagenetPreprocess()(img), tv(img))


# -- a preprocess receives PIL images; mixed sizes ---------------------------------------

def test_folder_images_reach_the_preprocess_as_pil(photos, tmp_path):
    out = tmp_path / "out"
    assert explain("--model", "models:rgb_model", "--data", photos, "--out", out,
                   "--preprocess", "test_preprocess:recording_preprocess", "--method", "cam") == 0
    assert SEEN and set(SEEN) <= {"PngImageFile", "JpegImageFile", "Image"}
    m = _manifest(out)
    assert m["counts"]["explained"] == 7 and m["shapes"]["image"] == [3, 32, 32]
    assert json.loads((out / "run.json").read_text())["preprocess"] == "test_preprocess:recording_preprocess"


def test_mixed_sizes_work_once_the_preprocess_fixes_the_size(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert explain("--model", "models:rgb_model", "--data", photos, "--out", out,
                   "--preprocess", "imagenet", "--method", "cam") == 0
    m = _manifest(out)
    assert m["counts"] == m["counts"] | {"images": 7, "explained": 7, "errors": 0}
    assert m["shapes"]["image"] == [3, 224, 224] and m["arguments"]["preprocess"] == "imagenet"
    # without a preprocess, only the images of the run's shape are explained, each other one
    # skipped with its reason
    assert explain("--model", "models:rgb_model", "--data", photos, "--out", tmp_path / "raw",
                   "--method", "cam", "--preprocess", "none") in (2, 3)
    err = capsys.readouterr().err
    assert "differs from the run's" in err or "the model fails" in err


def test_resume_with_another_preprocess_is_refused(photos, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model", "models:rgb_model", "--data", photos, "--out", out, "--method", "cam"]
    assert explain(*args, "--preprocess", "imagenet") == 0
    capsys.readouterr()
    assert explain(*args, "--preprocess", "test_preprocess:recording_preprocess") == 2
    assert "differs in: image_shape, preprocess" in capsys.readouterr().err


def test_failed_items_name_their_reasons(photos, tmp_path, capsys):
    assert explain("--model", "models:rgb_model", "--data", photos, "--out", tmp_path / "o",
                   "--preprocess", "test_preprocess:failing_preprocess") == 2
    err = capsys.readouterr().err
    assert "no image of DATA could be read (7 of 7 items failed; first: " in err
    assert err.count("ValueError: this preprocess refuses every image") == 3  # the first three named
    assert "cat/1.png" in err


def test_model_that_fails_on_the_images_is_a_usage_error(photos, tmp_path, capsys):
    # a 1-channel model given RGB 224 x 224 inputs: a message, not a traceback
    assert explain("--model", "models:tiny_model", "--data", photos, "--out", tmp_path / "o",
                   "--preprocess", "imagenet", "--method", "cam") == 2
    err = capsys.readouterr().err
    assert "the model fails on the images of DATA as preprocessed (the first has shape (3, 224, 224))" in err
    assert "--preprocess" in err


@pytest.mark.parametrize("spec, message", [
    ("bogus", "--preprocess 'bogus': expected imagenet, none or package.module:callable"),
    ("no_such_module:f", "cannot import module 'no_such_module'"),
])
def test_bad_preprocess(photos, tmp_path, capsys, spec, message):
    assert explain("--model", "models:rgb_model", "--data", photos, "--out", tmp_path / "o",
                   "--preprocess", spec) == 2
    assert message in capsys.readouterr().err


def test_help_documents_the_pil_convention(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preprocess SPEC" in text and "as a PIL image (torchvision's convention" in text
    assert "torchvision.models:NAME or timm:NAME" in text and "--weights FILE" in text
    assert "weights_only=True" in text


# -- torchvision / timm models, --weights --------------------------------------------------

def _fake_zoo(monkeypatch, calls):
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.list_models = lambda: ["resnet18", "tiny_rgb"]

    def get_model(name, **kw):
        calls.append(("torchvision", name, kw))
        return rgb_model()

    models.get_model = get_model
    tv.models = models
    timm = types.ModuleType("timm")
    timm.list_models = lambda: ["tiny_rgb"]
    timm.is_model = lambda name: name.split(".")[0] == "tiny_rgb"  # "arch.pretrained_tag" names too

    def create_model(name, **kw):
        calls.append(("timm", name, kw))
        return rgb_model()

    timm.create_model = create_model
    for name, mod in (("torchvision", tv), ("torchvision.models", models), ("timm", timm)):
        monkeypatch.setitem(sys.modules, name, mod)


def test_zoo_models_are_built_without_pretrained_weights(monkeypatch):
    calls = []
    _fake_zoo(monkeypatch, calls)
    a = cio.load_model("torchvision.models:tiny_rgb")
    b = cio.load_model("timm:tiny_rgb.in1k")
    assert calls == [("torchvision", "tiny_rgb", {"weights": None}), ("timm", "tiny_rgb.in1k", {"pretrained": False})]
    assert (a.kind, b.kind) == ("torchvision", "timm") and not a.model.training
    with pytest.raises(cio.BatchError, match=r"torchvision has no model 'resnet9000' \(e\.g\. .*2 in all"):
        cio.load_model("torchvision.models:resnet9000")


def test_zoo_packages_not_installed(monkeypatch):
    for name in ("torchvision", "torchvision.models", "timm"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    with pytest.raises(cio.BatchError, match=r"needs torchvision, which is not installed here .*pip install torchvision"):
        cio.load_model("torchvision.models:resnet18")
    with pytest.raises(cio.BatchError, match=r"needs timm, which is not installed here .*pip install timm"):
        cio.load_model("timm:resnet18")


def test_weights_file(monkeypatch, tmp_path, photos):
    calls = []
    _fake_zoo(monkeypatch, calls)
    trained = rgb_model()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(-2)
    path = tmp_path / "w.pt"
    torch.save(trained.state_dict(), path)
    loaded = cio.load_model("torchvision.models:tiny_rgb", weights=str(path))
    assert loaded.fingerprint == cio.state_dict_fingerprint(trained)
    # a checkpoint dict and DistributedDataParallel's "module." prefix
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, path)
    assert cio.load_model("timm:tiny_rgb", weights=str(path)).fingerprint == cio.state_dict_fingerprint(trained)
    out = tmp_path / "out"
    assert explain("--model", "torchvision.models:tiny_rgb", "--weights", path, "--data", photos, "--out", out,
                   "--preprocess", "imagenet", "--method", "cam") == 0
    m = _manifest(out)
    assert m["model"]["fingerprint"] == cio.state_dict_fingerprint(trained) and m["model"]["kind"] == "torchvision"


def test_bad_weights_files(monkeypatch, tmp_path):
    calls = []
    _fake_zoo(monkeypatch, calls)
    spec = "torchvision.models:tiny_rgb"
    partial = {k: v for k, v in rgb_model().state_dict().items() if not k.startswith("0.")}
    torch.save({**partial, "extra.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(cio.BatchError, match=r"does not fit the model: missing 2 entries: 0\.weight, 0\.bias; "
                                             r"unexpected 1 entries: extra\.weight"):
        cio.load_model(spec, weights=str(tmp_path / "partial.pt"))
    bad = dict(rgb_model().state_dict(), **{"0.weight": torch.zeros(2, 3, 3, 3)})
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(cio.BatchError, match="does not fit the model: .*size mismatch for 0.weight"):
        cio.load_model(spec, weights=str(tmp_path / "shape.pt"))
    torch.save(types.SimpleNamespace(a=1), tmp_path / "code.pt")  # a pickle weights_only refuses
    with pytest.raises(cio.BatchError, match=r"cannot load it with torch.load\(weights_only=True\)"):
        cio.load_model(spec, weights=str(tmp_path / "code.pt"))
    with pytest.raises(cio.BatchError, match="cannot load it"):
        cio.load_model(spec, weights=str(tmp_path / "missing.pt"))


def test_real_torchvision_model_and_preprocess(tmp_path):
    tvm = pytest.importorskip("torchvision.models")
    loaded = cio.load_model("torchvision.models:resnet18")
    assert loaded.kind == "torchvision" and isinstance(loaded.model, tvm.ResNet)
    x = cio.ImagenetPreprocess()(Image.new("RGB", (320, 240), (120, 60, 30)))[None]
    with torch.no_grad():
        assert loaded.model(x).shape == (1, 1000)
