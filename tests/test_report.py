"""``clear-native report OUT``: the static results page over a batch run (files, paging data,
pictures drawn once, inputs), checked in a real headless browser (Debian's chromium driven
by its chromedriver over the W3C WebDriver protocol, from the standard library: nothing
is downloaded; the browser test skips where either is missing); the notebook views and
``to_xarray``; the explain summary that says what its numbers are."""
import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import clear_native
from clear_native import cli
from clear_native import report as rep

pytest.importorskip("zarr")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

FIRST, LAST = 40, 8  # the sample's first images and its last ones (misclassified on purpose)


def _have_builtin() -> bool:
    return "mnist" in clear_native.available_models() and clear_native.data.sample_path("mnist").is_file()


needs_builtin = pytest.mark.skipif(not _have_builtin(), reason="this build ships no MNIST weights / sample")


def explain(*args) -> int:
    return cli.main(["explain", "--no-progress", *map(str, args)])


def report(*args) -> int:
    return cli.main(["report", "--no-progress", *map(str, args)])


def _slice(path: Path) -> Path:
    """A slice of the shipped sample as an .npz: the first images and the last (the sample
    ends with misclassified digits)."""
    s = clear_native.load_sample("mnist")
    keep = np.r_[0:FIRST, len(s.images) - LAST:len(s.images)]
    np.savez(path, images=s.images[keep], labels=s.labels[keep])
    return path


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    """The shipped model over a slice of the shipped sample, with the focus maps."""
    if not _have_builtin():
        pytest.skip("this build ships no MNIST weights / sample")
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    assert explain("--data", _slice(root / "slice.npz"), "--out", out, "--batch-size", 16,
                   "--store", "dominant,response,focus") == 0
    return out


def _index(out: Path) -> dict:
    text = (out / "report" / "data" / "index.js").read_text()
    prefix = "window.CLEAR_REPORT = "
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


def _table(out: Path) -> list:
    return pq.read_table(out / "table.parquet").to_pylist()


# -- the files ------------------------------------------------------------------------------

def test_report_files_and_index(run_out, capsys):
    assert report(run_out, "--page-size", 16) == 0
    assert "48 images; pictures: 48 drawn" in capsys.readouterr().out
    folder = run_out / "report"
    page = (folder / "index.html").read_text()
    assert '<script src="data/index.js"></script>' in page and 'loading: "lazy"' in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing from the network
    data = _index(run_out)
    table = _table(run_out)
    assert data["page_size"] == 16 and len(data["rows"]["key"]) == len(table) == FIRST + LAST
    assert data["rows"]["pred"] == [r["prediction"] for r in table]
    assert data["rows"]["strong"][0] == round(1000 * table[0]["prediction_share_strong"])
    assert data["panels"] == ["input", "positive focus", "negative focus", "CLEAR map", "CLEAR overlay",
                              "for (red) / against (blue)"]
    manifest = json.loads((run_out / "manifest.json").read_text())
    res = data["summary"]["results"]
    assert res["accuracy"] == manifest["results"]["accuracy"]
    wrong = sum(r["label"] != r["prediction"] for r in table)
    assert wrong >= LAST // 2 and res["correct"] == len(table) - wrong
    assert data["summary"]["inputs"].startswith("DATA read again")
    assert len(data["classes"]["colours"]) == 10
    for i in (0, FIRST + LAST - 1):
        with Image.open(folder / rep.picture_path("thumbs", i)) as im:
            assert im.size == (28, 28) and im.mode == "RGB"
        with Image.open(folder / rep.picture_path("detail", i)) as im:
            assert im.size == (28 * 6, 28)


def test_pictures_are_drawn_once(run_out, capsys):
    assert report(run_out) == 0
    thumb = run_out / "report" / rep.picture_path("thumbs", 3)
    before = thumb.stat().st_mtime_ns
    capsys.readouterr()
    assert report(run_out) == 0
    assert "pictures: 0 drawn, 48 kept" in capsys.readouterr().out
    assert thumb.stat().st_mtime_ns == before
    thumb.unlink()
    assert report(run_out) == 0
    assert "pictures: 1 drawn, 47 kept" in capsys.readouterr().out and thumb.is_file()
    assert report(run_out, "--thumb", 16) == 0  # another size: every picture again
    assert "pictures: 48 drawn, 0 kept" in capsys.readouterr().out
    with Image.open(thumb) as im:
        assert im.size == (16, 16)
    assert report(run_out, "--force") == 0
    assert "pictures: 48 drawn" in capsys.readouterr().out


def test_refuses_what_is_not_a_finished_run(tmp_path, capsys):
    assert report(tmp_path) == 2
    assert "no manifest.json: not a finished clear-native explain run" in capsys.readouterr().err
    assert report(tmp_path, "--page-size", 0) == 2
    assert "--page-size must be >= 1" in capsys.readouterr().err


@needs_builtin
def test_stored_inputs_csv_table_and_missing_data(tmp_path, capsys):
    data = _slice(tmp_path / "slice.npz")
    out = tmp_path / "out"
    assert explain("--data", data, "--out", out, "--method", "cam", "--store", "dominant,response,input",
                   "--table", "csv") == 0
    stored = zarr_array(out, "input")
    assert stored.shape == (FIRST + LAST, 1, 28, 28) and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored[:, 0], np.load(data)["images"])  # uint8 / 255 * 255
    assert report(out) == 0
    index = _index(out)
    assert index["summary"]["inputs"].startswith("the model's input, stored by the run")
    assert index["panels"] == ["input", "CLEAR map", "CLEAR overlay"]  # no focus stored
    assert index["rows"]["label"] == [int(v) for v in np.load(data)["labels"]]
    # without --store input and with DATA gone: the maps on black, said so
    out2 = tmp_path / "out2"
    assert explain("--data", data, "--out", out2, "--method", "cam") == 0
    data.unlink()
    capsys.readouterr()
    assert report(out2) == 0
    assert "under the maps: the maps on black: DATA cannot be read again" in capsys.readouterr().out
    assert _index(out2)["panels"] == ["CLEAR map"]


def test_photos_through_the_imagenet_geometry(tmp_path):
    from test_preprocess import _photo

    data = tmp_path / "photos"
    for k, size in enumerate([(300, 200), (180, 260), (500, 375)]):
        _photo(data / "a" / f"{k}.jpg", size, seed=k)
    out = tmp_path / "out"
    assert explain("--model", "test_preprocess:rgb_model", "--data", data, "--out", out, "--method", "cam",
                   "--preprocess", "imagenet", "--store", "dominant,response,focus") == 0
    assert report(out) == 0
    index = _index(out)
    assert index["summary"]["inputs"].endswith("through --preprocess imagenet's resize and centre crop")
    assert index["thumb_shape"] == [128, 128] and index["panel_shape"] == [224, 224]
    with Image.open(out / "report" / rep.picture_path("thumbs", 2)) as im:
        assert im.size == (128, 128)
    with Image.open(out / "report" / rep.picture_path("detail", 2)) as im:
        strip = np.asarray(im.convert("RGB"))
    assert strip.shape == (224, 224 * 6, 3)
    # the input panel is the photo's centre crop, as the model saw it (before normalisation)
    with Image.open(data / "a" / "2.jpg") as photo:
        want = np.asarray(photo.convert("RGB").resize((341, 256), Image.BILINEAR).crop((58, 16, 282, 240)))
    np.testing.assert_array_equal(strip[:, :224], want)


def zarr_array(out: Path, name: str) -> np.ndarray:
    import zarr

    return zarr.open_array(str(out / "clear.zarr" / name), mode="r")[:]


# -- the page in a real browser -----------------------------------------------------------

def _browser():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium / chromedriver here (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


class WebDriver:
    """The few W3C WebDriver commands the test needs, spoken to chromedriver with urllib."""

    ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

    def __init__(self, browser: str, driver: str, profile: str, size=(1280, 900)):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self._wait(lambda: self._call("GET", "/status").get("ready"), 30, "chromedriver to start")
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync",
                f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
                                                 "goog:chromeOptions": {"binary": browser, "args": args}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.read().decode()[:500]}") from None

    def cmd(self, method: str, path: str, body=None):
        return self._call(method, f"/session/{self.session}{path}", body)

    @staticmethod
    def _wait(check, seconds: float, what: str):
        end = time.monotonic() + seconds
        while True:
            try:
                value = check()
                if value:
                    return value
            except (OSError, AssertionError):
                pass
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def get(self, url: str):
        self.cmd("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_js(self, script: str, what: str, seconds: float = 20):
        return self._wait(lambda: self.js(script), seconds, what)

    def find(self, css: str) -> dict:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})

    def click(self, element: dict):
        self.cmd("POST", f"/element/{element[self.ELEMENT]}/click", {})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.cmd("GET", "/screenshot"))

    def errors(self) -> list:
        return [e for e in self.cmd("POST", "/se/log", {"type": "browser"}) if e.get("level") == "SEVERE"]

    def close(self):
        try:
            self.cmd("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    path, driver = _browser()
    wd = WebDriver(path, driver, tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    yield wd
    wd.close()


def test_page_in_a_headless_browser(run_out, browser, tmp_path):
    assert report(run_out, "--page-size", 16) == 0
    table = _table(run_out)
    wrong = [r["index"] for r in table if r["label"] != r["prediction"]]
    url = (run_out / "report" / "index.html").resolve().as_uri()
    browser.get(url)
    shown = browser.wait_js("return document.querySelectorAll('#grid .item').length", "the grid")
    assert shown == 16  # one page
    assert browser.js("return document.getElementById('count').textContent") == f"{len(table)} of {len(table)} images"
    assert browser.js("return [...document.querySelectorAll('#grid img')].every(i => i.loading === 'lazy')")
    assert "accuracy" in browser.js("return document.getElementById('summary').textContent")
    # the filter: misclassified only, chosen in the page's own select
    browser.click(browser.find("#show"))
    browser.click(browser.find("#show option[value=wrong]"))
    browser.wait_js(f"return document.getElementById('count').textContent === '{len(wrong)} of {len(table)} images'",
                    "the filter to apply")
    items = browser.js("return [...document.querySelectorAll('#grid .item')].map(a => [a.dataset.index, a.className])")
    assert [int(i) for i, _ in items] == wrong[:16] and all("bad" in c for _, c in items)
    assert "show=wrong" in browser.js("return location.hash")
    # open an image's page
    first = wrong[0]
    browser.click(browser.find(f"#grid .item[data-index='{first}']"))
    browser.wait_js("return !document.getElementById('detail').hidden", "the image's page")
    assert browser.js("return document.querySelector('#detail h2').textContent").startswith(f"image #{first}: ")
    panels = browser.js("return [...document.querySelectorAll('#detail figcaption')].map(f => f.textContent)")
    assert panels == ["input", "positive focus", "negative focus", "CLEAR map", "CLEAR overlay",
                      "for (red) / against (blue)"]
    browser.wait_js("""const u = getComputedStyle(document.querySelector('#detail .panel')).backgroundImage
                         .slice(5, -2); const im = new Image(); im.src = u; return im.complete && im.naturalWidth > 0""",
                    "the image's views to load")
    png = browser.screenshot()
    shot = tmp_path / "report-image-page.png"
    shot.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"), np.int16)
    assert rgb.shape[0] > 500 and rgb.shape[1] > 800
    saturated = (rgb.max(-1) - rgb.min(-1)) > 120  # the colour maps are on the screen
    assert saturated.mean() > 0.01
    browser.click(browser.find("#close"))
    browser.wait_js("return document.getElementById('detail').hidden", "the list again")
    assert browser.errors() == []
    if os.environ.get("CLEAR_NATIVE_SCREENSHOT"):  # keep a copy (the README's picture)
        shutil.copy(shot, os.environ["CLEAR_NATIVE_SCREENSHOT"])


# -- notebooks ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maps():
    g = torch.Generator().manual_seed(0)
    responses = torch.rand(12, 5, 20, 24, generator=g)
    d = clear_native.dominance(responses, target=torch.arange(12) % 5)
    return d


def test_repr_png_and_html(maps):
    png = maps._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(__import__("io").BytesIO(png)) as im:
        assert im.size[0] >= rep.NOTEBOOK_IMAGES * 96  # 8 tiles of 96 pixels, no more
    page = maps._repr_html_()
    assert page.count("<img ") == rep.NOTEBOOK_IMAGES and "the first 8 shown" in page
    assert "dominant class (share of the coloured pixels)" in page
    assert "target 3" in page  # captions
    empty = clear_native.dominance(torch.rand(0, 3, 4, 4))
    assert empty._repr_png_() is None and empty._repr_html_() is None


@needs_builtin
def test_clearmaps_repr_and_xarray_spec():
    model = clear_native.load_pretrained("mnist")
    x, y = clear_native.load_sample("mnist").tensors()
    maps = clear_native.Clear(model, method="cam")(x[:3], target=y[:3])
    assert "pred " in maps._repr_html_() and maps._repr_png_()[:4] == b"\x89PNG"
    spec = rep.xarray_spec(maps, class_names=clear_native.class_names("mnist"))
    dv = spec["data_vars"]
    assert dv["dominant_class"][0] == ("image", "y", "x") and dv["dominant_class"][1].shape == (3, 28, 28)
    assert dv["logits"][0] == ("image", "class") and dv["prediction"][0] == ("image",)
    assert spec["attrs"] == {"method": "cam", "num_classes": 10}
    assert list(spec["coords"]["class_name"][1]) == list(clear_native.class_names("mnist"))


@needs_builtin
def test_to_xarray():
    xr = pytest.importorskip("xarray")
    model = clear_native.load_pretrained("mnist")
    x, y = clear_native.load_sample("mnist").tensors()
    maps = clear_native.Clear(model, method="cam")(x[:4], target=y[:4])
    ds = maps.to_xarray()
    assert isinstance(ds, xr.Dataset) and ds.sizes == {"image": 4, "y": 28, "x": 28, "class": 10}
    np.testing.assert_array_equal(ds["dominant_class"].values, maps.dominant_class.numpy())
    assert int(ds["prediction"].sel(image=2)) == int(maps.prediction[2])
    share = (ds["dominant_class"] == ds["prediction"]).mean(("y", "x"))  # analysis in one line
    assert share.dims == ("image",)


def test_to_xarray_without_xarray(maps, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"to_xarray\(\) needs xarray, an optional dependency: pip install xarray"):
        maps.to_xarray()


# -- the explain summary says what its numbers are -----------------------------------------

@needs_builtin
def test_explain_summary_says_what_the_numbers_are(tmp_path, capsys):
    assert explain("--out", tmp_path / "out", "--method", "cam", "--batch-size", 256) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "explained images with a label: prediction == label" in err
    assert "note: the built-in sample is enriched with misclassified test images" in err and "full test set" in err
    assert "class sensitivity: the prediction's share of the strong pixels" in err
    assert "clear-native report" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["results"]["labelled"] == manifest["counts"]["explained"]
    assert "test_accuracy" in manifest["results"]["sample"]
