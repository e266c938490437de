"""What a run explains with: the model on the run's device and dtype, the explainer
(``Clear`` or a hook), the data as DataLoader items, and the probe that fixes the run's
image shape, map shape and number of classes before anything is written."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable

import torch

import clear_native
from clear_native.batch.dist import Dist, resolve_device
from clear_native.batch.options import DTYPES, SHAPE_SAMPLE, BatchOptions, parse_classes
from clear_native.io import (BatchError, DataSource, Items, LoadedModel, _first_lines, load_data, load_model,
                             resolve_preprocess)
from clear_native.io.preprocess import ImagenetPreprocess


def _default_explainer(model: torch.nn.Module, method: str, signal: str | None = None, input_bounds=None):
    """:class:`clear_native.Clear` for ``method`` (``signal``: None = the method's default;
    ``input_bounds``: lrp's z^B box where the preprocessing says it)."""
    if method == "lrp" and input_bounds is not None:
        return clear_native.Clear(model, method=method, signal=signal, input_bounds=input_bounds)
    return clear_native.Clear(model, method=method, signal=signal)


def input_domain(preprocess) -> tuple | None:
    """The model's input domain ``(low, high)`` per channel where a preprocessing normalises
    [0, 1] images with a known mean / std (``--preprocess imagenet``), else None."""
    if not isinstance(preprocess, ImagenetPreprocess) or not preprocess.normalize:
        return None
    m, s = preprocess.mean, preprocess.std
    return tuple((0 - a) / b for a, b in zip(m, s)), tuple((1 - a) / b for a, b in zip(m, s))


@dataclass
class Explainer:
    """The run's model (on its device, in its dtype), explainer and data."""

    loaded: LoadedModel
    source: DataSource
    model: torch.nn.Module
    explain: Callable        # explain(images, target, classes=...) -> ClearMaps-like
    device: torch.device
    dtype: torch.dtype
    classes: object          # parse_classes(--classes): None, K or a list of ids
    autocast: str | None
    items: Items

    def autocast_ctx(self):
        """``torch.autocast`` of ``--autocast`` (a no-op without it)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.autocast])

    def maps(self, images: torch.Tensor):
        """The maps of ``images`` (on the device, in the dtype). With a class list, the
        focus target is the listed class with the highest logit (the prediction, when it
        is listed)."""
        with self.autocast_ctx():
            target = None
            if isinstance(self.classes, list):
                with torch.no_grad():
                    logits = self.model(images)
                listed = torch.tensor(self.classes, device=logits.device)
                target = listed[logits[:, listed].argmax(1)]
            return self.explain(images, target, classes=self.classes)

    def logits(self, images: torch.Tensor):
        with torch.no_grad(), self.autocast_ctx():
            return self.model(images)


def load(o: BatchOptions, dist: Dist, explainer: Callable | None, loaded: LoadedModel | None,
         source: DataSource | None) -> Explainer:
    """Loads the model and data of ``o`` (unless given) and makes the explainer: ``explainer(model,
    method)`` or ``Clear(model, method, signal=o.signal)``, whose ``signal`` (when it has
    one) must be the run's."""
    device = resolve_device(o.device, dist)
    dtype = DTYPES[o.dtype]
    classes = parse_classes(o.classes)
    loaded = loaded or load_model(o.model, trust_code=o.trust_model_code, weights=o.weights)
    source = source or load_data(o.data, max_pixels=o.max_pixels or None, hash_contents=o.hash_data)
    if len(source) == 0:
        raise BatchError(f"--data {source.spec!r} holds no items")
    model = loaded.model.to(device=device, dtype=dtype)
    signal = o.resolved_signal()
    preprocess = resolve_preprocess(o.preprocess, loaded, source)
    make = explainer or functools.partial(_default_explainer, signal=o.signal, input_bounds=input_domain(preprocess))
    ex = make(model, o.method)
    ex_signal = getattr(ex, "signal", signal)
    if ex_signal != signal:
        raise BatchError(f"the explainer back-projects signal {ex_signal!r}, but the run's signal is "
                         f"{signal!r} (--signal); make them agree")
    items = Items(source, preprocess)
    return Explainer(loaded, source, model, ex, device, dtype, classes, o.autocast, items)


def _common_shape(items: Items, sample: int) -> tuple[tuple, torch.Tensor]:
    """The most common (ch, H, W) among the first ``sample`` readable images (a tie: the
    shape seen first) and the first image of that shape."""
    counts: dict[tuple, int] = {}
    first: dict[tuple, torch.Tensor] = {}
    reasons: list[str] = []
    failed = 0
    n = len(items)
    for i in range(n):
        _, img, _, err = items[i]
        if err is not None:
            failed += 1
            if len(reasons) < 3:
                reasons.append(f"{items.keys[i]}: {err}")
            continue
        shape = tuple(img.shape)
        counts[shape] = counts.get(shape, 0) + 1
        first.setdefault(shape, img)
        if sum(counts.values()) >= sample:
            break
    if not counts:
        raise BatchError(f"no image of DATA could be read ({failed} of {n} items failed; first: "
                         f"{'; '.join(reasons)}); nothing to explain")
    shape = max(counts, key=counts.get)  # the first of the most common (dicts keep insertion order)
    return shape, first[shape]


def probe(ex: Explainer, classes_spec: str, sample: int = SHAPE_SAMPLE) -> tuple[tuple, tuple, int]:
    """(image shape, map shape, C).

    The run's image shape is the most common (ch, H, W) among the first ``sample``
    readable images (a tie: the shape seen first), so one stray image sorting first does
    not decide it; images of another shape become per-image errors naming both shapes.
    C comes from the model's logits for the first image of that shape (``--classes`` is
    checked against it), the map shape from explaining that image.
    """
    shape, img = _common_shape(ex.items, sample)
    x = img[None].to(ex.device, ex.dtype)
    try:
        logits = ex.logits(x)
        if isinstance(logits, torch.Tensor) and logits.dim() == 2:
            parse_classes(classes_spec, int(logits.shape[1]))
        maps = ex.maps(x)
    except ValueError as e:  # Clear's message for a model it cannot explain this way
        raise BatchError(f"cannot explain this model with these options (--method / --signal / "
                         f"--classes): {e}") from e
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as e:  # e.g. 1-channel images for an RGB model, or unresized photos
        raise BatchError(f"the model fails on the images of DATA as preprocessed (the first has shape "
                         f"{shape}): {type(e).__name__}: {_first_lines(str(e), 2)}; give a --preprocess "
                         f"that makes them what the model expects (--preprocess imagenet: 3 x 224 x 224, "
                         f"ImageNet mean / std)") from e
    return shape, tuple(maps.dominant_class.shape[1:]), int(maps.logits.shape[1])
