"""The sanity report: checks a..e of :mod:`clear_native.metrics.sanity` and
:mod:`clear_native.metrics.pointing` plus the causal check, for one configuration
(:func:`sanity_report`, one :class:`SanityRow`), and the targets of the default method
(:data:`THRESHOLDS`, :func:`passes`)."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from clear_native.explain import Clear
from clear_native.metrics.pointing import GridPointing, grid_pointing
from clear_native.metrics.sanity import (clear_explain, data_randomisation, model_randomisation, prediction_leads,
                                         reference_images)
from clear_native.metrics.sensitivity import class_sensitivity

# -- the report -----------------------------------------------------------------------------

#: Targets of the default method: field of :class:`SanityRow` -> (comparison, value).
#: Head randomisation is judged on the prediction's own map (Adebayo et al. compare the
#: explanation of the class, as the head re-initialisation changes it): the dominant
#: response after it is the maximum over random class maps, all linear in the same features,
#: so its ranks follow the feature energy whatever the head (cam: rho 0.86 with class
#: agreement at chance on EfficientNet-Lite0); ``head_rho`` and ``head_class_agreement``
#: report the CLEAR output beside it.
THRESHOLDS: dict[str, tuple[str, float]] = {
    "rho_image_noise": ("<=", 0.4),
    "rho_image_image": ("<=", 0.6),
    "pointing_strong": (">=", 0.9),
    "pointing_visible": (">=", 0.8),
    "class_share": (">=", 0.6),
    "causal_effect": (">", 0.0),
    "causal_ci_low": (">", 0.0),
    "causal_regions": (">=", 50),
    "head_predicted_map_rho": ("<=", 0.5),
    "prediction_leads": (">=", 0.8),
}

_OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}


@dataclass
class SanityRow:
    """One configuration's sanity checks (:func:`sanity_report`); NaN = not measurable.

    rho_*: :class:`DataRandomisation` on ``data_images`` images (``rho_class_maps``: same
    class id across images; ``rho_detail_*``: fine detail, None unless asked); head_*,
    cascade_*: :class:`ModelRandomisation` on ``model_images`` images (``cascade_steps``
    steps; ``cascade`` its rows); pointing_*: :class:`GridPointing` (``mosaics``);
    prediction_leads: :func:`prediction_leads` over ``leads_images`` correct images;
    class_share: predicted class's share of the strong pixels of correct images;
    causal_*: the causal check (effect, 95% bootstrap interval, testable regions); these
    three on ``images`` images; seconds: wall time.
    """

    method: str
    signal: str | None
    channel_reduce: str | None
    rho_image_image: float
    rho_image_noise: float
    rho_image_constant: float
    rho_class_maps: float | None
    rho_detail_image_image: float | None
    rho_detail_image_noise: float | None
    head_rho: float
    head_class_agreement: float
    head_predicted_map_rho: float
    cascade_rho: float
    cascade_class_agreement: float
    cascade_steps: int
    pointing_strong: float
    pointing_visible: float
    mosaics: int
    prediction_leads: float
    leads_images: int
    class_share: float
    causal_effect: float
    causal_ci_low: float
    causal_ci_high: float
    causal_regions: int
    data_images: int
    model_images: int
    seconds: float
    cascade: list[dict] = field(default_factory=list)
    images: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def passes(row: SanityRow | dict) -> dict[str, bool]:
    """Per :data:`THRESHOLDS` entry, whether ``row`` meets it (NaN / None never does)."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    out = {}
    for key, (op, value) in THRESHOLDS.items():
        v = get(key)
        out[key] = v is not None and not (isinstance(v, float) and math.isnan(v)) and _OPS[op](v, value)
    return out


def evenly_spaced(n: int, k: int | None) -> torch.Tensor:
    """Indices of ``k`` evenly spaced items of ``n`` (all when k is None or >= n)."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, k).round().long().unique()


_FIELDS = ("dominant_class", "dominant_response", "target_response", "prediction", "class_maps", "classes")


def _select(maps, index: torch.Tensor):
    """The maps of the images ``index`` (fields of :data:`_FIELDS`; a shared (C',) class table stays)."""
    out = type("Maps", (), {})()
    for f in _FIELDS:
        v = getattr(maps, f, None)
        keep = v is None or (f == "classes" and v.dim() == 1)
        setattr(out, f, v if keep else v[index.to(v.device)])
    return out


def _data_part(model, explain, x, mean, std, noise, detail, seed, data_index):
    """The maps of ``x`` and :class:`DataRandomisation` of those of ``x[data_index]`` against
    noise / constant images."""
    maps = explain(model, x)
    noise_x, const_x = reference_images(x.shape[1:], mean, std, noise=noise, seed=seed)
    ref = [explain(model, r.to(x.device)) if r.shape[0] else None for r in (noise_x, const_x)]
    return maps, data_randomisation(_select(maps, data_index), ref[0], ref[1], detail=detail)


def sanity_report(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                  method_kwargs: dict, *, classes=None, mean: Sequence[float] = (0.0,),
                  std: Sequence[float] = (1.0,), data_images: int | None = None,
                  data_index: torch.Tensor | None = None, model_images: int = 4,
                  cascade_steps: int | None = None, max_mosaics: int | None = None,
                  downscale: bool = False, noise_images: int = 2, detail: bool = False,
                  background: float = 0.0, seed: int = 0, mosaic_images: torch.Tensor | None = None) -> SanityRow:
    """Runs checks a..e for one configuration and returns one :class:`SanityRow`.

    Args:
        model: the classifier (eval mode); images: (N, C_in, H, W) preprocessed inputs;
            labels: (N,) or None (the prediction counts as the label).
        method_kwargs: ``{"method": name, **Clear kwargs}`` (:func:`clear_explain`).
        classes: the class set of every explanation but the mosaics' (None / list / int k).
        mean, std: per-channel input normalisation (for :func:`reference_images`).
        data_images: evenly spaced images (all: None) for the leads, shares and causal check;
            data_index: indices into those of the images of the data randomisation (default:
            all; e.g. one per source photo); model_images: the first of the latter for the
            model randomisation (``cascade_steps`` steps); max_mosaics: cap on the grid
            pointing game's mosaics (from all images).
        background: deleted pixels' value in the causal check.
        mosaic_images: the grid pointing game's image pool (default: ``images``).
    """
    t0 = time.perf_counter()
    kwargs = dict(method_kwargs)
    method = kwargs.pop("method")
    explain = clear_explain(method, classes=classes, **kwargs)
    idx = evenly_spaced(images.shape[0], data_images)
    x = images[idx]
    y = None if labels is None else labels[idx]
    sub = torch.arange(x.shape[0]) if data_index is None else torch.as_tensor(data_index, dtype=torch.int64)
    maps, data = _data_part(model, explain, x, mean, std, noise_images, detail, seed, sub)
    k = min(model_images, sub.numel())
    mr = model_randomisation(model, explain, x[sub[:k].to(x.device)], max_steps=cascade_steps, seed=seed,
                             base=_select(maps, sub[:k]))
    pool = images if mosaic_images is None else mosaic_images
    gp: GridPointing = grid_pointing(model, explain, pool, max_mosaics=max_mosaics, downscale=downscale)
    leads, n_leads = prediction_leads(maps.dominant_class, maps.dominant_response, maps.prediction, y)
    sens = class_sensitivity(model, x, maps.prediction if y is None else y, maps, background=background,
                             seed=seed, batch_size=64)
    lo, hi = sens.causal_effect_ci
    probe = Clear(model, method, **kwargs)  # the configuration's signal and reduction, defaults resolved
    signal = getattr(probe, "signal", None)
    reduce = getattr(probe, "channel_reduce", None) if signal is not None else None
    return SanityRow(method, signal, reduce,
                     data.image_image, data.image_noise, data.image_constant, data.class_maps,
                     data.detail_image_image, data.detail_image_noise,
                     mr.head_spearman, mr.head_class_agreement, mr.head_predicted_map_spearman,
                     mr.final_spearman, mr.final_class_agreement, len(mr.steps),
                     gp.strong, gp.visible, gp.mosaics, leads, n_leads, sens.share_predicted_correct,
                     sens.causal_effect, lo, hi, sens.causal_pairs, int(sub.numel()), k,
                     round(time.perf_counter() - t0, 1), mr.steps, int(x.shape[0]))
