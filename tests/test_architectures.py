"""The support table: CLEAR maps of the architectures people use, every method.

Each cell (architecture x method) builds the model with random weights
(``pretrained=False``, eval mode, small inputs), explains two images on two classes
(``classes=[a, b]``, ``keep_class_maps=True``) and compares the maps with an
independent class-by-class loop written here: the feature layer ``f`` is taken by a
hook on the module this file names for each architecture and reshaped to its grid by
hand; per class, one plain backward pass gives ``g = dy_c/df``, the class map
``M = sum_k f g + (y_c - sum f g) / (h w)``; cam is ``h w M`` upsampled, the
back-projection methods send ``g * relu(M)`` from ``f`` down to the image under the
method's activation rules (:class:`clear_native._relu_rules.relu_rule`, whose rules
``tests/test_activations.py`` checks) and reduce the colour channels.

torchvision and timm load with torch 2.14.1 (CI stage 2); without them the cells skip.
``CLEAR_SUPPORT_TABLE=path.md pytest tests/test_architectures.py`` writes docs/architectures.md's
support table from the results.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import clear_native

pytestmark = pytest.mark.usefixtures("raw_class_scale")  # per-class loops: the maps as projected
from clear_native import explain as explain_mod
from clear_native import reference
from clear_native._relu_rules import relu_rule

METHODS = ["cam", "deconvnet", "guided", "gradient"]
CLASSES = [3, 7]
FIELDS = ["dominant_class", "dominant_response", "runner_up_class", "runner_up_response",
          "weakest_class", "weakest_response", "target_response", "rival_class", "rival_response"]


def _lib(name: str):
    """The library, or a skip (absent, or failing to load with this torch)."""
    try:
        return pytest.importorskip(name)
    except pytest.skip.Exception:
        raise
    except Exception as e:  # e.g. a torchvision wheel built for another torch
        pytest.skip(f"{name} does not load here: {type(e).__name__}: {e}")


def _tv(name, **kw):
    return lambda: getattr(_lib("torchvision").models, name)(weights=None, **kw)


def _timm(name, **kw):
    return lambda: _lib("timm").create_model(name, pretrained=False, **kw)


def _tokens(prefix, h, w):
    """(to_grid, from_grid) of patch tokens (N, prefix + h w, D), written out."""
    def to_grid(t):
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    def from_grid(s, like):
        out = torch.zeros_like(like)
        out[:, prefix:] = s.permute(0, 2, 3, 1).reshape(like.shape[0], h * w, like.shape[2])
        return out

    return to_grid, from_grid


MAP = (lambda t: t, lambda s, like: s)
CHANNELS_LAST = (lambda t: t.permute(0, 3, 1, 2), lambda s, like: s.permute(0, 2, 3, 1))

# name: (label, build, image size, head, where f is: (module name, its input or output),
#        (to_grid, from_grid))
ARCHS = {
    "tv_resnet18": ("torchvision resnet18", _tv("resnet18"), 64, "GAP + linear",
                    ("avgpool", "input"), MAP),
    "tv_mobilenet_v3_small": ("torchvision mobilenet_v3_small", _tv("mobilenet_v3_small"), 64,
                              "GAP + MLP (linear, Hardswish, linear)", ("avgpool", "input"), MAP),
    "tv_efficientnet_b0": ("torchvision efficientnet_b0", _tv("efficientnet_b0"), 64,
                           "GAP + dropout + linear", ("avgpool", "input"), MAP),
    # DenseNet pools functionally: F.relu(features, inplace=True), F.adaptive_avg_pool2d
    "tv_densenet121": ("torchvision densenet121", _tv("densenet121"), 64,
                       "functional GAP + linear", ("features", "output"), MAP),
    "tv_convnext_tiny": ("torchvision convnext_tiny", _tv("convnext_tiny"), 64,
                         "GAP + LayerNorm2d + linear", ("avgpool", "input"), MAP),
    "tv_regnet_x_400mf": ("torchvision regnet_x_400mf", _tv("regnet_x_400mf"), 64, "GAP + linear",
                          ("avgpool", "input"), MAP),
    "tv_vit_b_16": ("torchvision vit_b_16", _tv("vit_b_16", image_size=64), 64,
                    "last block, LayerNorm, class token, linear", ("encoder.layers.encoder_layer_11", "input"),
                    _tokens(1, 4, 4)),
    "timm_resnet18": ("timm resnet18", _timm("resnet18"), 64, "GAP + linear",
                      ("global_pool", "input"), MAP),
    "timm_deit_tiny": ("timm deit_tiny_patch16_224", _timm("deit_tiny_patch16_224", img_size=64), 64,
                       "last block, LayerNorm, class token, linear", ("blocks.11", "input"), _tokens(1, 4, 4)),
    "timm_vit_tiny": ("timm vit_tiny_patch16_224", _timm("vit_tiny_patch16_224", img_size=64), 64,
                      "last block, LayerNorm, class token, linear", ("blocks.11", "input"), _tokens(1, 4, 4)),
    "timm_swin_tiny": ("timm swin_tiny_patch4_window7_224",
                       _timm("swin_tiny_patch4_window7_224", img_size=64), 64,
                       "GAP of a channels-last map + linear", ("head.global_pool", "input"),
                       CHANNELS_LAST),
}

# (arch, method) -> the clear error that cell gives (a regex); none at present.
ERRORS: dict = {}
_MODEL: dict = {}  # the current architecture: its model and reference head terms (cells run arch by arch)
RESULTS: dict = {}  # (arch, method) -> cell text, for the table of docs/architectures.md


def _model(arch):
    if arch not in _MODEL:
        _MODEL.clear()  # one architecture at a time
        build = ARCHS[arch][1]
        torch.manual_seed(0)
        model = build().eval()
        with torch.no_grad():
            for p in model.parameters():  # torchvision's ViT starts its head at zero
                if p.dim() >= 2 and not bool(p.any()):
                    nn.init.normal_(p, std=0.05)
        _MODEL[arch] = model
    return _MODEL[arch]


@pytest.fixture(scope="module", autouse=True)
def _support_table():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)
    _MODEL.clear()
    path = os.environ.get("CLEAR_SUPPORT_TABLE")
    if path and RESULTS:
        with open(path, "w") as fh:
            fh.write(support_table(RESULTS))


def support_table(results: dict) -> str:
    lines = ["| architecture | head (above f) | feature layer f (at 64x64) | " + " | ".join(METHODS) + " |",
             "|---" * (3 + len(METHODS)) + "|"]
    for arch, (label, _, _, head, _, _) in ARCHS.items():
        cells = [results.get((arch, m)) for m in METHODS]
        if not any(cells):
            continue
        where = next((c["where"] for c in cells if c and c.get("where")), "-")
        lines.append(f"| {label} | {head} | {where} | "
                     + " | ".join(c["text"] if c else "not run" for c in cells) + " |")
    return "\n".join(lines) + "\n"


# -- the independent per-class loop ---------------------------------------------------------

def _forward_capturing(model, x, site, use_input):
    """(logits, f): ``f`` is the input or output of ``site`` in this forward pass."""
    rec = {}
    if use_input:
        handle = site.register_forward_pre_hook(lambda m, args: rec.__setitem__("f", args[0]))
    else:
        handle = site.register_forward_hook(lambda m, args, out: rec.__setitem__("f", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, rec["f"]


def _head_terms(model, images, arch):
    """Per class of CLASSES: (f, g = dy_c/df, y_c), one plain forward and backward pass each
    (the same for the four methods of an architecture: kept with its model)."""
    key = ("head", arch)
    if key not in _MODEL:
        site_name, io = ARCHS[arch][4]
        site = dict(model.named_modules())[site_name]
        terms = []
        for c in CLASSES:
            with torch.enable_grad():
                x = images.detach().clone().requires_grad_(True)
                logits, f = _forward_capturing(model, x, site, io == "input")
                y = logits[:, c]
                (g,) = torch.autograd.grad(y.sum(), f)
            terms.append((f.detach(), g, y.detach()))
        _MODEL[key] = terms
    return _MODEL[key]


def reference_maps(model, images, method, arch):
    """(N, len(CLASSES), H, W): one class at a time, plain autograd and hand-written grids."""
    _, _, _, _, (site_name, io), (to_grid, from_grid) = ARCHS[arch]
    site = dict(model.named_modules())[site_name]
    use_input = io == "input"
    out = []
    for f, g, y in _head_terms(model, images, arch):
        f0, grid_g = to_grid(f), to_grid(g)
        contrib = (f0 * grid_g).sum(1)                           # (N, h, w)
        hw = contrib[0].numel()
        m = contrib + ((y - contrib.sum((1, 2))) / hw).view(-1, 1, 1)
        if method == "cam":
            out.append(F.interpolate((hw * m).unsqueeze(1), size=images.shape[-2:], mode="bilinear",
                                     align_corners=False)[:, 0])
            continue
        signal = from_grid(grid_g * m.clamp(min=0).unsqueeze(1), f)
        rule = contextlib.nullcontext() if method == "gradient" else relu_rule(method)
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            with rule:
                _, f = _forward_capturing(model, x, site, use_input)
            (gx,) = torch.autograd.grad(f, x, signal)
        reduce = explain_mod.DEFAULT_CHANNEL_REDUCE[method]
        out.append(gx.abs().amax(1) if reduce == "max_abs" else gx.sum(1))
    return torch.stack(out, 1)


# -- the cells --------------------------------------------------------------------------------

CELLS = [pytest.param(arch, method, id=f"{arch}-{method}") for arch in ARCHS for method in METHODS]


@pytest.mark.parametrize("arch, method", CELLS)
def test_support_cell(arch, method):
    label, _, size, _, _, _ = ARCHS[arch]
    model = _model(arch)
    torch.manual_seed(1)
    images = torch.randn(2, 3, size, size)
    target = torch.tensor(CLASSES)
    explainer = clear_native.Clear(model, method)
    if (arch, method) in ERRORS:  # a clear error is a cell of the table too
        with pytest.raises(ValueError, match=ERRORS[arch, method]) as err:
            explainer(images, target, classes=CLASSES)
        RESULTS[arch, method] = {"text": f"✗ {err.value}", "where": None}
        return
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = explainer(images, target, classes=CLASSES, keep_class_maps=True)
    seconds = time.perf_counter() - start
    want = reference_maps(model, images, method, arch)
    assert got.class_maps.shape == (2, len(CLASSES), size, size)
    scale = float(want.abs().amax())  # random weights: some models' maps are tiny (~1e-9)
    assert scale > 0 and not torch.allclose(want[:, 0], want[:, 1], rtol=1e-3, atol=1e-3 * scale)
    torch.testing.assert_close(got.class_maps, want, rtol=1e-3, atol=1e-4 * scale)
    ref = reference.dominance(got.class_maps, torch.tensor([0, 1]))
    table = torch.tensor(CLASSES)
    torch.testing.assert_close(got.dominant_class, table[ref.dominant_class])
    torch.testing.assert_close(got.target_response, ref.target_response)
    how, _, where = explainer.last_source.partition(" at the ")
    what, _, shape = where.partition(", shape ")
    if method == "cam":
        text = CAM_TEXT[how]
    else:
        text = "✓ response from the " + ("token grid" if what.startswith("token grid") else
                                         "channels-last map" if what.startswith("channels-last") else "map")
    notes = sorted({str(w.message).split(": ", 1)[-1].split(". The rules reach")[0]
                    for w in caught if str(w.message).startswith("Clear(")})  # the rules' warnings
    if notes:
        text += f" (warns: {'; '.join(notes)})"
    dims = " x ".join(shape.strip("()").split(", ")[1:])
    RESULTS[arch, method] = {"text": text, "where": f"{what.removeprefix('map of the ')} ({dims})",
                             "seconds": seconds}


CAM_TEXT = {"linear head (fused)": "✓ linear head, fused",
            "1x1 class convolution (fused)": "✓ 1x1 class convolution, fused",
            "class maps of the last convolution": "✓ class maps of the last convolution",
            "head contribution": "✓ contribution of the head"}
