"""clear_native.render (fused CLEAR map renderer) against clear_native.reference.render,
the palettes, the comparison views and the matplotlib figures."""
import sys
from types import SimpleNamespace

import pytest
import torch

import clear_native
from clear_native import palettes, reference
from clear_native.render import colormap, compute_scale
from conftest import LOWER_CPU_BODIES, run_with_baseline_cpu_build, DEVICES, FLOAT_DTYPES

OP = torch.ops.clear_native.render.default


def maps_of(classes, responses, **extra):
    """A duck-typed maps object (what ClearMaps and Dominance both provide)."""
    return SimpleNamespace(dominant_class=classes, dominant_response=responses, **extra)


def rand_maps(n, h, w, c, dtype=torch.float32, device="cpu", specials=True):
    cls = torch.randint(0, c, (n, h, w))
    resp = torch.rand(n, h, w, dtype=torch.float64) * 3 - 0.5
    if specials:
        r = torch.rand(n, h, w)
        cls[r < 0.05] = -1
        resp[(r >= 0.05) & (r < 0.1)] = float("nan")
        resp[(r >= 0.1) & (r < 0.12)] = 0.0
    return cls.to(device), resp.to(dtype=dtype, device=device)


def assert_close_u8(got, want, tol=1):
    assert got.dtype == torch.uint8 and got.shape == want.shape, (got.shape, want.shape)
    diff = (got.cpu().int() - want.cpu().int()).abs().max().item() if got.numel() else 0
    assert diff <= tol, f"max difference {diff} grey levels"


# --- pixel-exact checks on tiny hand-made inputs ------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_known_pixels(device):
    # 1 image, 1 x 6 pixels: class 3 at full response, class 1 at half, zero
    # response, NaN response, class -1, negative response.
    cls = torch.tensor([[[3, 1, 2, 1, -1, 5]]], device=device)
    resp = torch.tensor([[[2.0, 1.0, 0.0, float("nan"), 2.0, -1.0]]], device=device)
    out = clear_native.render(maps_of(cls, resp), num_classes=10).cpu()
    assert out.shape == (1, 1, 6, 3)
    assert out[0, 0, 0].tolist() == list(palettes.PAPER[3])        # full response: its colour
    assert out[0, 0, 1].tolist() == [128, 60, 0]                   # (255, 120, 0) * 0.5, rounded
    for k in (2, 3, 4, 5):                                          # zero / NaN / -1 / negative
        assert out[0, 0, k].tolist() == [0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_overlay_policy(device):
    cls = torch.tensor([[[0, -1]]], device=device)
    resp = torch.tensor([[[1.0, 1.0]]], device=device)
    img = torch.full((1, 3, 1, 2), 100, dtype=torch.uint8, device=device)
    m = maps_of(cls, resp)
    out = clear_native.render(m, img, overlay=0.5, num_classes=10).cpu()
    assert out[0, 0, 0].tolist() == [178, 50, 50]   # 0.5 * 100 + 0.5 * (255, 0, 0)
    assert out[0, 0, 1].tolist() == [50, 50, 50]    # hidden: black map over the image
    out = clear_native.render(m, img, overlay=0.5, transparent=True, num_classes=10).cpu()
    assert out[0, 0, 1].tolist() == [100, 100, 100]  # hidden + transparent: the image
    out = clear_native.render(m, img, overlay=0.5, transparent=True, brightness=0.5,
                              num_classes=10).cpu()
    assert out[0, 0, 1].tolist() == [50, 50, 50]    # dimmed image
    # Grey vs colour image; float image in [0, 1].
    img = torch.tensor([1.0, 0.0, 0.0], device=device).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    out = clear_native.render(m, img, overlay=0.0, transparent=True, num_classes=10).cpu()
    assert out[0, 0, 1].tolist() == [76, 76, 76]    # 0.299 * 255
    out = clear_native.render(m, img, overlay=0.0, grey=False, num_classes=10).cpu()
    assert out[0, 0, 1].tolist() == [255, 0, 0]


def test_threshold_and_normalisation():
    cls = torch.zeros(2, 1, 4, dtype=torch.long)
    resp = torch.tensor([[[0.0, 1.0, 2.0, 4.0]], [[0.0, 1.0, 2.0, 8.0]]])
    m = maps_of(cls, resp)
    red = lambda out: out[..., 0].tolist()  # noqa: E731
    assert red(clear_native.render(m)) == [[[0, 64, 128, 255]], [[0, 32, 64, 255]]]
    assert red(clear_native.render(m, normalize="batch")) == [[[0, 32, 64, 128]], [[0, 32, 64, 255]]]
    assert red(clear_native.render(m, normalize=2.0)) == [[[0, 128, 255, 255]], [[0, 128, 255, 255]]]
    # Percentile 50 of (0, 1, 2, 4) is 1.5.
    assert red(clear_native.render(m, percentile=50))[0] == [[0, 170, 255, 255]]
    # threshold on the normalised value: 0.25 hides 1/4 (not above it).
    assert red(clear_native.render(m, threshold=0.25))[0] == [[0, 0, 128, 255]]
    assert clear_native.response_scale([m, m]) == 8.0
    assert clear_native.response_scale(resp, percentile=100) == 8.0


def test_scale_edge_cases():
    resp = torch.tensor([[[float("nan")] * 3], [[-1.0, 0.0, -2.0]], [[1.0, float("inf"), 3.0]]])
    s = compute_scale(resp)
    assert s[0] > 0 and s[1] > 0 and s[2] == 3.0   # inf ignored by the statistic
    out = clear_native.render(maps_of(torch.zeros(3, 1, 3, dtype=torch.long), resp))
    assert out[0].sum() == 0 and out[1].sum() == 0
    assert out[2, 0, :, 0].tolist() == [85, 255, 255]
    with pytest.raises(ValueError, match="positive number"):
        clear_native.render(maps_of(torch.zeros(3, 1, 3, dtype=torch.long), resp), normalize="max")
    with pytest.raises(ValueError, match="finite and > 0"):
        clear_native.render(maps_of(torch.zeros(3, 1, 3, dtype=torch.long), resp), normalize=0.0)


def test_dominance_ties_render_lowest_class():
    x = torch.ones(1, 3, 2, 2)  # every class tied: class 0 wins (dominance's rule)
    out = clear_native.render(clear_native.dominance(x))
    assert (out.reshape(-1, 3) == torch.tensor(palettes.PAPER[0], dtype=torch.uint8)).all()


# --- native vs reference ----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("image_kind", [None, "uint8", "float32", "float64", "grey1", "colour"])
def test_matches_reference(dtype, device, image_kind):
    n, h, w, c = 3, 11, 13, 7
    cls, resp = rand_maps(n, h, w, c, dtype, device)
    pal = palettes.get_palette(c).to(device)
    scale = compute_scale(resp)
    image, grey = None, True
    if image_kind == "uint8":
        image = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, device=device)
    elif image_kind == "float32":
        image = torch.rand(n, 3, h, w, device=device)
    elif image_kind == "float64":
        image = torch.rand(n, 3, h, w, dtype=torch.float64, device=device)
    elif image_kind == "grey1":
        image = torch.rand(n, 1, h, w, device=device)
    elif image_kind == "colour":
        image, grey = torch.rand(n, 3, h, w, device=device), False
    for overlay, threshold, transparent in [(0.5, 0.0, False), (0.3, 0.2, True)]:
        args = (cls, resp, scale, pal, image, overlay, threshold, 0.8, grey, transparent)
        assert_close_u8(OP(*args), reference.render(*args))


@pytest.mark.parametrize("device", DEVICES)
def test_random_batch_large(device):
    cls, resp = rand_maps(4, 67, 71, 12, torch.float32, device)
    image = torch.rand(4, 3, 67, 71, device=device)
    got = clear_native.render(maps_of(cls, resp), image, num_classes=12)
    want = reference.render(cls, resp, compute_scale(resp), palettes.get_palette(12).to(device), image)
    assert_close_u8(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["transposed", "sliced", "channels_last_image", "expanded"])
def test_non_contiguous(layout, device):
    cls, resp = rand_maps(2, 9, 10, 5, torch.float32, device)
    image = torch.rand(2, 3, 9, 10, device=device)
    if layout == "transposed":
        cls, resp = cls.transpose(1, 2), resp.transpose(1, 2)
        image = image.transpose(2, 3)
    elif layout == "sliced":
        cls, resp, image = cls[:, ::2, 1:], resp[:, ::2, 1:], image[:, :, ::2, 1:]
    elif layout == "channels_last_image":
        image = image.contiguous(memory_format=torch.channels_last)
    elif layout == "expanded":
        cls, resp = cls[:1].expand(2, -1, -1), resp[:1].expand(2, -1, -1)
    assert not (cls.is_contiguous() and image.is_contiguous()) or layout == "channels_last_image"
    pal = palettes.get_palette(5).to(device)
    scale = compute_scale(resp)
    want = reference.render(cls.contiguous(), resp.contiguous(), scale, pal, image.contiguous())
    assert_close_u8(OP(cls, resp, scale, pal, image), want)


def test_empty_and_odd_sizes():
    for shape in [(0, 4, 4), (2, 0, 5), (1, 1, 1)]:
        cls = torch.zeros(shape, dtype=torch.long)
        resp = torch.ones(shape)
        out = clear_native.render(maps_of(cls, resp), num_classes=3)
        assert out.shape == (*shape, 3) and out.dtype == torch.uint8


@pytest.mark.parametrize("body", LOWER_CPU_BODIES)
def test_baseline_simd_build_matches_reference(body):
    """The scalar (and, on AVX-512 CPUs, the AVX2) CPU body, forced through the environment."""
    code = (
        "import torch, clear_native\n"
        "from clear_native import reference, palettes\n"
        "from clear_native.render import colormap, compute_scale\n"
        f"assert clear_native.build_info()['cpu_capability'] == {body!r}\n"
        "torch.manual_seed(0)\n"
        "cls = torch.randint(-1, 6, (2, 9, 37)); resp = torch.randn(2, 9, 37)\n"
        "img = torch.rand(2, 3, 9, 37); pal = palettes.get_palette(6)\n"
        "s = compute_scale(resp)\n"
        "a = torch.ops.clear_native.render(cls, resp, s, pal, img)\n"
        "b = reference.render(cls, resp, s, pal, img)\n"
        "assert (a.int() - b.int()).abs().max() <= 1\n"
        "print('ok')\n")
    run_with_baseline_cpu_build(code, body)


# --- the comparison views -----------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_binary_map(device):
    x = torch.zeros(1, 3, 1, 3, device=device)
    x[0, 1, 0, 0] = 2.0   # target (1) wins
    x[0, 2, 0, 1] = 2.0   # class 2 wins
    x[0, :, 0, 2] = 1.0   # tie: the positive focus wins
    d = clear_native.dominance(x, torch.tensor([1], device=device))
    out = clear_native.render_binary(d).cpu()
    assert out[0, 0].tolist() == [[255, 0, 0], [0, 0, 255], [128, 0, 0]]
    with pytest.raises(ValueError, match="target_response"):
        clear_native.render_binary(clear_native.dominance(x))


def test_focus_heatmaps():
    x = torch.zeros(1, 2, 1, 3)
    x[0, 0, 0] = torch.tensor([0.0, 1.0, 2.0])
    x[0, 1, 0] = torch.tensor([4.0, 0.0, float("nan")])
    d = clear_native.dominance(x, torch.tensor([0]))
    pos = clear_native.render_focus(d, "positive")
    lut = colormap("hot")
    assert pos[0, 0].tolist() == [[0, 0, 0], lut[128].tolist(), [255, 255, 255]]
    neg = clear_native.render_focus(d, "negative")
    assert neg[0, 0, 0].tolist() == [255, 255, 255] and neg[0, 0, 1].tolist() == [0, 0, 0]
    img = torch.full((1, 1, 3), 0.4)
    out = clear_native.render_heatmap(d.target_response, img, transparent=True, overlay=0.5)
    assert out[0, 0, 0].tolist() == [102, 102, 102]   # zero response: the image shows


# --- palettes -----------------------------------------------------------------------

def test_palettes():
    assert palettes.get_palette(10).tolist() == [list(c) for c in palettes.PAPER]
    g = palettes.get_palette(300)
    assert g.shape == (300, 3) and torch.equal(g, palettes.get_palette(300))  # stable
    assert torch.equal(g[:50], palettes.golden_palette(50))   # independent of the class count
    assert len({tuple(c) for c in g[:20].tolist()}) == 20
    assert palettes.get_palette(7, "okabe_ito").tolist()[0] == [230, 159, 0]
    assert palettes.get_palette(9, "tol_muted").shape == (9, 3)
    with pytest.raises(ValueError, match="7 colours, but 8 classes"):
        palettes.get_palette(8, "tol_bright")
    with pytest.raises(ValueError, match="unknown palette"):
        palettes.get_palette(3, "rainbow")
    assert palettes.as_palette([(1.0, 0.0, 0.5)]).tolist() == [[255, 0, 128]]


def test_palette_stable_across_calls():
    cls, resp = rand_maps(2, 5, 5, 40, specials=False)
    a = clear_native.render(maps_of(cls, resp, num_classes=40))
    b = clear_native.render(maps_of(cls[:1], resp[:1], num_classes=40))
    assert torch.equal(a[:1], b)
    # Class 3 has the same colour in a batch where it is alone.
    one = clear_native.render(maps_of(torch.full((1, 1, 1), 3), torch.ones(1, 1, 1), num_classes=40))
    assert one[0, 0, 0].tolist() == palettes.golden_palette(4)[3].tolist()


def test_top_k_other_is_grey():
    cls = torch.tensor([[[5, 5, 5, 7, 7, 9]]])
    resp = torch.ones(1, 1, 6)
    out = clear_native.render(maps_of(cls, resp), num_classes=300, top_k=2)
    g = palettes.get_palette(300)
    assert out[0, 0, 0].tolist() == g[5].tolist() and out[0, 0, 3].tolist() == g[7].tolist()
    assert out[0, 0, 5].tolist() == list(palettes.OTHER)
    assert palettes.top_k_classes(cls, 300, 5) == [5, 7, 9]


def test_class_shares():
    cls = torch.tensor([[[0, 0, 1, -1]]])
    assert palettes.class_shares(cls, 3).tolist() == [[0.5, 0.25, 0.0]]
    # Only masked-in pixels count (e.g. the coloured ones: positive response).
    mask = torch.tensor([[[True, False, True, True]]])
    torch.testing.assert_close(palettes.class_shares(cls, 3, mask), torch.tensor([[1 / 3, 1 / 3, 0.0]]))
    none = torch.zeros_like(mask)
    assert palettes.class_shares(cls, 3, none).tolist() == [[0.0, 0.0, 0.0]]


# --- bad input ----------------------------------------------------------------------

def test_bad_input():
    cls, resp = rand_maps(2, 4, 5, 3, specials=False)
    with pytest.raises(ValueError, match=r"\[-1, 3\).*got values in \[1, 3\]"):
        clear_native.render(maps_of(cls + 1, resp), palette=palettes.get_palette(3))
    with pytest.raises(ValueError, match=r"\(2, 4, 5\), got \(2, 5, 4\)"):
        clear_native.render(maps_of(cls, resp.transpose(1, 2)))
    with pytest.raises(ValueError, match=r"image must be \(2, C, 4, 5\).*got \(2, 3, 4, 6\)"):
        clear_native.render(maps_of(cls, resp), torch.rand(2, 3, 4, 6))
    with pytest.raises(ValueError, match="image must be"):
        clear_native.render(maps_of(cls, resp), torch.rand(2, 2, 4, 5))
    with pytest.raises(ValueError, match="overlay"):
        clear_native.render(maps_of(cls, resp), torch.rand(2, 3, 4, 5), overlay=1.5)
    with pytest.raises(TypeError, match="float32"):
        clear_native.render(maps_of(cls, resp.to(torch.int32)))
    with pytest.raises(ValueError, match="dominant_response"):
        clear_native.render(SimpleNamespace(dominant_class=cls))
    # The operator's own checks name expected vs got.
    pal, s = palettes.get_palette(3), torch.ones(2)
    with pytest.raises(RuntimeError, match=r"scale must be \(N,\) = \(2,\), got \(3,\)"):
        OP(cls, resp, torch.ones(3), pal)
    with pytest.raises(RuntimeError, match=r"palette must be \(P, 3\) RGB, got \(3, 4\)"):
        OP(cls, resp, s, torch.zeros(3, 4, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"image must be \(2, 1 or 3, 4, 5\)"):
        OP(cls, resp, s, pal, torch.rand(2, 3, 5, 5))
    with pytest.raises(RuntimeError, match="classes must be int64, got Int"):
        OP(cls.int(), resp, s, pal)
    # Out-of-palette classes reaching the operator directly are hidden, never read out of bounds.
    out = OP(torch.full((1, 1, 2), 99), torch.ones(1, 1, 2), torch.ones(1), pal)
    assert out.sum() == 0


@pytest.mark.parametrize("bad", ["responses", "scale", "palette", "image"])
def test_inputs_on_another_device_are_refused(bad):
    # A meta palette among CPU inputs used to reach the fake kernel and return
    # uninitialised CPU memory.
    cls, resp = rand_maps(2, 4, 5, 3)
    args = {"responses": resp, "scale": torch.ones(2), "palette": palettes.get_palette(3),
            "image": torch.rand(2, 3, 4, 5)}
    args[bad] = args[bad].to("meta")
    msg = rf"render: {bad} must be on the device of classes \(cpu\), got meta"
    with pytest.raises(RuntimeError, match=msg):   # the fake kernel (the dispatcher's choice)
        OP(cls, *args.values())
    with pytest.raises(RuntimeError, match=msg):   # the C++ front end of the CPU kernel
        OP.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), cls, *args.values(),
                      0.5, 0.0, 1.0, True, False)
    # All inputs on meta (tracing) still work.
    out = OP(cls.to("meta"), *(a.to("meta") for a in args.values()))
    assert out.device.type == "meta" and out.shape == (2, 4, 5, 3) and out.dtype == torch.uint8


def test_palette_on_another_device_is_refused():
    cls, resp = rand_maps(2, 4, 5, 3)
    with pytest.raises(ValueError, match="the palette is on meta but the maps are on cpu"):
        clear_native.render(maps_of(cls, resp), palette=palettes.get_palette(3).to("meta"))
    with pytest.raises(ValueError, match="the palette is on meta but the maps are on cpu"):
        clear_native.render_heatmap(resp, cmap=colormap("hot").to("meta"))


def test_cuda_tensor_without_cuda_build():
    if clear_native.build_info()["cuda"] or not torch.cuda.is_available():
        pytest.skip("needs a CUDA device and a CPU-only build")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        clear_native.render(maps_of(torch.zeros(1, 2, 2, dtype=torch.long, device="cuda"),
                                    torch.ones(1, 2, 2, device="cuda")))


# --- torch.library and torch.compile ------------------------------------------------

def test_opcheck():
    cls, resp = rand_maps(2, 5, 6, 4)
    pal, s = palettes.get_palette(4), compute_scale(resp)
    torch.library.opcheck(OP, (cls, resp.half(), s, pal, torch.rand(2, 3, 5, 6), 0.4, 0.1, 0.9, False, True))
    torch.library.opcheck(OP, (cls.transpose(1, 2), resp.transpose(1, 2), s, pal,
                               torch.randint(0, 256, (2, 1, 6, 5), dtype=torch.uint8)))


def test_torch_compile_fullgraph():
    pal = palettes.get_palette(5)

    def f(x, img):
        d = clear_native.dominance(x)
        return clear_native.render(d, img, palette=pal, percentile=90)

    x = torch.randn(2, 5, 8, 9)
    img = torch.rand(2, 3, 8, 9)
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    assert_close_u8(compiled(x, img), f(x, img), tol=0)


# --- figures ------------------------------------------------------------------------

def _read_png(path):
    import matplotlib.image as mpimg
    return (mpimg.imread(path)[..., :3] * 255).round().astype("uint8")


def _has_colour(pixels, rgb, tol=3):
    import numpy as np
    return bool((np.abs(pixels.astype(int) - np.array(rgb)).max(-1) <= tol).any())


@pytest.fixture(scope="module")
def example():
    torch.manual_seed(1)
    x = torch.zeros(3, 4, 16, 16)
    x[:, 0, :8] = 1.0
    x[:, 1, 8:] = 2.0
    x[:, 2, :, :4] = 3.0
    x = x + 0.01 * torch.rand_like(x)
    target = torch.tensor([0, 1, 3])
    return clear_native.dominance(x, target), torch.rand(3, 3, 16, 16), target


def test_figure_written_and_reread(tmp_path, example):
    pytest.importorskip("matplotlib")
    from clear_native import plot
    d, img, target = example
    names = {0: "zero", 1: "one", 2: "a very long class name that has to be wrapped", 3: "three"}
    fig = plot.figure(d, img, labels=target, predictions=torch.tensor([0, 2, 1]), class_names=names,
                      path=tmp_path / "fig", dpi=50)
    assert (tmp_path / "fig.png").exists() and (tmp_path / "fig.pdf").exists()
    assert (tmp_path / "fig.pdf").read_bytes()[:4] == b"%PDF"
    pixels = _read_png(tmp_path / "fig.png")
    w, h = fig.get_size_inches() * 50
    assert pixels.shape[:2] == (round(h), round(w))
    for c in range(3):  # the legend (and the maps) show the classes' palette colours
        assert _has_colour(pixels, palettes.PAPER[c]), c
    texts = " ".join(t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text")))
    assert "true: zero" in texts and "pred: a very long" in texts
    assert "a very long\nclass name" in texts  # the legend wraps long names


def test_grid_correct_vs_wrong(tmp_path, example):
    pytest.importorskip("matplotlib")
    from clear_native import plot
    d, img, target = example
    fig = plot.grid(d, img, labels=target, predictions=torch.tensor([0, 2, 3]),
                    class_names=["zero", "one", "two", "three"], path=tmp_path / "grid.png", dpi=40)
    pixels = _read_png(tmp_path / "grid.png")
    w, h = fig.get_size_inches() * 40
    assert pixels.shape[:2] == (round(h), round(w))
    texts = " ".join(t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text")))
    assert "correct (2)" in texts and "wrong (1)" in texts


def test_plot_without_matplotlib(monkeypatch, example):
    d, img, target = example
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        clear_native.plot.figure(d, img)


def test_figure_many_classes_groups_other(tmp_path):
    pytest.importorskip("matplotlib")
    from clear_native import plot
    d = clear_native.dominance(torch.randn(2, 40, 8, 8), torch.tensor([0, 1]))
    fig = plot.figure(d, predictions=[0, 3], path=tmp_path / "many.png", dpi=40)
    texts = " ".join(t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text")))
    assert "other\n" in texts   # more than 12 classes present: the rest is grouped
