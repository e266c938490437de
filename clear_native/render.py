"""CLEAR maps as pictures (paper eq. 6): hue = the dominant class's colour,
saturation 1, value = the dominant response normalised to [0, 1], optionally
overlaid on the input image; plus the paper's comparison views (positive- and
negative-focus heatmaps, the binary for/against map).

Every view is drawn by one fused native operator, ``torch.ops.clear_native.render``
(palette lookup, normalisation, value scaling and overlay in one pass over the
pixels); the per-image normalisation statistics are computed here with torch.

Pixel policy (the operator's, see csrc/render_element.h):
    * V = clamp(response / scale, 0, 1); the pixel is *drawn* when its class is
      in the palette and V > threshold. Class -1 (no class), NaN responses and
      responses at or below the threshold are *hidden*: drawn black, or, with
      ``transparent=True``, left as the (dimmed) image.
    * With an image: drawn = (1 - overlay) * image + overlay * colour * V,
      hidden = (1 - overlay) * image (black) or the image itself (transparent);
      ``image`` means the input in grey (``grey=True``) or colour, times
      ``brightness``. Without an image the map is drawn at full strength on black.
    * Ties between classes are settled before rendering (the dominance rule:
      lowest class id). In the binary map a tie goes to the positive focus.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from clear_native import palettes as _palettes
from clear_native._ops import require_device_support

__all__ = ["render", "render_binary", "render_heatmap", "render_focus", "response_scale",
           "compute_scale", "binary_classes", "colormap"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_TINY = torch.finfo(torch.float32).tiny


# --- normalisation ----------------------------------------------------------------

def _finite_max(flat: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(flat), flat, torch.full_like(flat, -math.inf)).amax(1)


def _finite_percentile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """Row-wise q-th percentile (linear interpolation) of the finite values; NaN
    for a row without any. torch.quantile is avoided: it caps the input size."""
    finite = torch.isfinite(flat)
    x = torch.where(finite, flat, torch.full_like(flat, math.nan)).sort(1).values  # NaN last
    k = finite.sum(1)
    pos = (q / 100.0) * (k - 1).clamp(min=0).to(flat.dtype)
    lo = pos.floor().long().clamp(min=0, max=max(flat.shape[1] - 1, 0))
    hi = pos.ceil().long().clamp(min=0, max=max(flat.shape[1] - 1, 0))
    vlo = x.gather(1, lo.unsqueeze(1)).squeeze(1)
    vhi = x.gather(1, hi.unsqueeze(1)).squeeze(1)
    out = vlo + (vhi - vlo) * (pos - lo.to(flat.dtype))
    return torch.where(k > 0, out, torch.full_like(out, math.nan))


def _check_percentile(percentile):
    if percentile is None:
        return
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) \
            or not 0 <= percentile <= 100:
        raise ValueError(f"render: percentile must be a number in [0, 100], got {percentile!r}")


def compute_scale(responses: torch.Tensor, normalize="image", percentile: float | None = None
                  ) -> torch.Tensor:
    """``(N,)`` float32 normaliser of ``(N, H, W)`` responses: V = response / scale.

    Args:
        normalize: ``"image"`` (each image by its own statistic: the paper's look),
            ``"batch"`` (one statistic over the whole batch), or a positive number
            (a fixed scale, e.g. from :func:`response_scale` over a data set, so
            maps of different batches are comparable).
        percentile: the statistic: ``None`` for the maximum, or a percentile in
            [0, 100] (e.g. 99: the brightest 1 % saturate; robust to outliers).

    Only finite responses count. A statistic that is not positive (all responses
    <= 0, or none finite) gives the smallest positive float, so every positive
    response saturates and the rest are black.
    """
    n = responses.shape[0]
    _check_percentile(percentile)
    if isinstance(normalize, (int, float)) and not isinstance(normalize, bool):
        if not (math.isfinite(normalize) and normalize > 0):
            raise ValueError(f"render: a fixed normalize value must be finite and > 0, got {normalize!r}")
        return torch.full((n,), float(normalize), dtype=torch.float32, device=responses.device)
    if normalize not in ("image", "batch"):
        raise ValueError(
            f"render: normalize must be 'image', 'batch' or a positive number, got {normalize!r}")
    flat = responses.reshape(n, math.prod(responses.shape[1:]))
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    if normalize == "batch":
        flat = flat.reshape(1, -1)
    if flat.shape[1] == 0:
        stat = torch.full((flat.shape[0],), math.nan, dtype=flat.dtype, device=flat.device)
    elif percentile is None:
        stat = flat.amax(1)
        # Fast path: one reduction; only a NaN / inf maximum needs the masked one.
        if torch.compiler.is_compiling() or not bool(torch.isfinite(stat).all()):
            stat = _finite_max(flat)
    else:
        stat = _finite_percentile(flat, float(percentile))
    stat = stat.to(torch.float32)
    stat = torch.where(stat > 0, stat, torch.full_like(stat, _TINY))
    return stat.expand(n).contiguous() if normalize == "batch" else stat


def response_scale(maps_or_responses: Iterable, percentile: float | None = None,
                   field: str = "dominant_response") -> float:
    """One fixed normaliser over a whole data set, for ``render(normalize=...)``.

    ``maps_or_responses``: a tensor, a maps object, or an iterable of either
    (e.g. the maps of every batch); the maximum (or ``percentile``) of every finite
    value of ``field``.
    """
    _check_percentile(percentile)
    if isinstance(maps_or_responses, torch.Tensor) or hasattr(maps_or_responses, field):
        maps_or_responses = [maps_or_responses]
    parts = []
    for m in maps_or_responses:
        t = m if isinstance(m, torch.Tensor) else getattr(m, field)
        t = t.detach().reshape(-1).float().cpu()
        parts.append(t[torch.isfinite(t)])
    values = torch.cat(parts) if parts else torch.empty(0)
    if values.numel() == 0:
        raise ValueError("response_scale: no finite responses")
    if percentile is None:
        stat = float(values.max())
    else:
        stat = float(_finite_percentile(values.double().unsqueeze(0), float(percentile))[0])
    if not stat > 0:
        raise ValueError(f"response_scale: the statistic is {stat}, not positive; no positive responses")
    return stat


# --- input checks -----------------------------------------------------------------

def _field(maps, name: str, what: str) -> torch.Tensor:
    value = getattr(maps, name, None)
    if value is None:
        raise ValueError(f"{what}: the maps have no {name!r} (for the focus views, compute the "
                         "maps with a target)")
    return value


def _check_maps(classes: torch.Tensor, responses: torch.Tensor, what: str) -> None:
    if not isinstance(classes, torch.Tensor) or not isinstance(responses, torch.Tensor):
        raise TypeError(f"{what}: classes and responses must be tensors")
    if classes.dim() != 3:
        raise ValueError(f"{what}: maps must be (N, H, W), got class map of shape {tuple(classes.shape)}")
    if responses.shape != classes.shape:
        raise ValueError(f"{what}: the response map must have the class map's shape "
                         f"{tuple(classes.shape)}, got {tuple(responses.shape)}")
    if responses.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what}: responses must be float32, float64, float16 or bfloat16, "
                        f"got {responses.dtype}")
    if classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise TypeError(f"{what}: classes must be integer class ids, got {classes.dtype}")
    if responses.device != classes.device:
        raise ValueError(f"{what}: responses are on {responses.device} but classes on {classes.device}")
    require_device_support(classes, what)


def _prepare_image(image, shape, device, what: str):
    if image is None:
        return None
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(image)
    n, h, w = shape
    if image.dim() == 3:
        image = image.unsqueeze(1)
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"{what}: image must be (N, 3, H, W), (N, 1, H, W) or (N, H, W), "
                         f"got shape {tuple(image.shape)}")
    if (image.shape[0], image.shape[2], image.shape[3]) != (n, h, w):
        raise ValueError(f"{what}: image must be ({n}, C, {h}, {w}) to match the maps "
                         f"(N, H, W) = {(n, h, w)}, got {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f"{what}: image must be uint8 (0-255) or float (0-1), got {image.dtype}")
    if image.device != device:
        raise ValueError(f"{what}: image is on {image.device} but the maps are on {device}")
    return image


def _resolve_palette(palette, num_classes: int | None, classes: torch.Tensor, what: str
                     ) -> torch.Tensor:
    if palette is None or isinstance(palette, str):
        if num_classes is None:
            num_classes = int(classes.max()) + 1 if classes.numel() else 1
            num_classes = max(num_classes, 1)
        return _palettes.get_palette(num_classes, palette or "auto")
    return _palettes.as_palette(palette)


def _check_classes_in_palette(classes: torch.Tensor, num_colours: int, what: str) -> None:
    if classes.numel() == 0 or torch.compiler.is_compiling():
        return
    lo, hi = (int(v) for v in torch.aminmax(classes))
    if lo < -1 or hi >= num_colours:
        raise ValueError(
            f"{what}: class ids must lie in [-1, {num_colours}) for a palette of {num_colours} "
            f"colours (-1 = no class), got values in [{lo}, {hi}]")


def _op(classes, responses, scale, palette, image, overlay, threshold, brightness, grey,
        transparent, what):
    if not (isinstance(overlay, (int, float)) and 0 <= overlay <= 1):
        raise ValueError(f"{what}: overlay must lie in [0, 1], got {overlay!r}")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise TypeError(f"{what}: threshold must be a number (of normalised response, 0-1), got {threshold!r}")
    # Palettes are built on the CPU: moved to the maps' device; one on a third
    # device (a meta palette for CPU maps) cannot be.
    if palette.device not in (classes.device, torch.device("cpu")):
        raise ValueError(f"{what}: the palette is on {palette.device} but the maps are on "
                         f"{classes.device}; give it on the CPU or on the maps' device")
    palette = palette.to(classes.device)
    return torch.ops.clear_native.render(
        classes.to(torch.int64), responses, scale, palette, image, float(overlay),
        float(threshold), float(brightness), bool(grey), bool(transparent))


# --- public views -----------------------------------------------------------------

def render(maps, image: torch.Tensor | None = None, *, palette=None, normalize="image",
           percentile: float | None = None, overlay: float = 0.5, threshold: float = 0.0,
           transparent: bool = False, grey: bool = True, brightness: float = 1.0,
           top_k: int | None = None, num_classes: int | None = None) -> torch.Tensor:
    """The CLEAR map (paper eq. 6) as uint8 RGB ``(N, H, W, 3)``.

    Args:
        maps: a :class:`~clear_native.Dominance`, a ``ClearMaps``, or any object with
            ``dominant_class`` (N, H, W) int (-1 = no class) and ``dominant_response``
            (N, H, W) float (float32/64, float16, bfloat16; CPU or CUDA; any strides).
        image: optional input ``(N, 3, H, W)``, ``(N, 1, H, W)`` or ``(N, H, W)``,
            uint8 (0-255) or float (0-1), on the maps' device. Without it the map is
            drawn on black, as in the paper's figures.
        palette: ``None``/``"auto"`` (the paper's 10 colours for <= 10 classes,
            golden-ratio hues above), a palette name (see :mod:`clear_native.palettes`),
            or ``(P, 3)`` RGB colours indexed by class id.
        normalize, percentile: how responses map to V in [0, 1]: ``"image"`` (per
            image: the paper's look), ``"batch"``, or a fixed positive number (see
            :func:`response_scale` for a data-set-wide value); ``percentile`` (e.g. 99)
            clips at that percentile instead of the maximum. See :func:`compute_scale`.
        overlay: strength of the map over the image, in [0, 1] (ignored without image).
        threshold: pixels whose normalised response is <= threshold are hidden.
        transparent: hidden pixels show the image (True) or are drawn black (False).
        grey: show the image in grey (default) or in colour.
        brightness: factor on the image (e.g. 0.6 to dim it further).
        top_k: colour only the ``top_k`` classes that dominate the most pixels of this
            batch; the others are drawn grey ("other"). Useful for hundreds of classes.
        num_classes: number of classes, for the automatic palette; defaults to
            ``maps.num_classes`` when the maps have it, else the largest class + 1
            (pass it to keep colours fixed across batches).
    """
    what = "render"
    classes, responses = _field(maps, "dominant_class", what), _field(maps, "dominant_response", what)
    _check_maps(classes, responses, what)
    image = _prepare_image(image, classes.shape, classes.device, what)
    if num_classes is None:
        num_classes = getattr(maps, "num_classes", None) or None
    pal = _resolve_palette(palette, num_classes, classes, what)
    _check_classes_in_palette(classes, pal.shape[0], what)
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"render: top_k must be >= 0, got {top_k}")
        pal = _palettes.top_k_palette(pal, _palettes.top_k_classes(classes, pal.shape[0], top_k))
    scale = compute_scale(responses, normalize, percentile)
    return _op(classes, responses, scale, pal, image, overlay, threshold, brightness, grey,
               transparent, what)


def binary_classes(maps) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, response) of the for/against map: class 0 where the positive focus
    (target response) wins or ties, 1 where another class wins (rival response),
    -1 where both are NaN; the response is the winner's."""
    t = _field(maps, "target_response", "render_binary")
    r = _field(maps, "rival_response", "render_binary")
    t_ok, r_ok = ~torch.isnan(t), ~torch.isnan(r)
    pos = t_ok & (~r_ok | (t >= r))
    cls = torch.where(pos, torch.zeros_like(t, dtype=torch.int64),
                      torch.where(r_ok, torch.ones_like(t, dtype=torch.int64),
                                  torch.full_like(t, -1, dtype=torch.int64)))
    return cls, torch.where(pos, t, r)


def render_binary(maps, image: torch.Tensor | None = None, *, colours: Sequence = _palettes.BINARY,
                  normalize="image", percentile: float | None = None, overlay: float = 0.5,
                  threshold: float = 0.0, transparent: bool = False, grey: bool = True,
                  brightness: float = 1.0) -> torch.Tensor:
    """The paper's binary map, uint8 ``(N, H, W, 3)``: red where the positive focus
    (``target_response``) wins, blue where another class (``rival_response``) wins,
    with the winner's normalised response as value. Needs maps computed with a target."""
    cls, resp = binary_classes(maps)
    _check_maps(cls, resp, "render_binary")
    image = _prepare_image(image, cls.shape, cls.device, "render_binary")
    pal = _palettes.as_palette(colours)
    if pal.shape[0] != 2:
        raise ValueError(f"render_binary: colours must be 2 RGB colours (for, against), got {pal.shape[0]}")
    scale = compute_scale(resp, normalize, percentile)
    return _op(cls, resp, scale, pal, image, overlay, threshold, brightness, grey, transparent,
               "render_binary")


def colormap(name: str = "hot", n: int = 256) -> torch.Tensor:
    """``(n, 3)`` uint8 lookup table of a colour map: ``"hot"`` (black-red-yellow-white,
    built in) or ``"grey"``; any other name is taken from matplotlib if installed."""
    x = torch.linspace(0, 1, n, dtype=torch.float64)
    if name == "hot":
        rgb = torch.stack([(3 * x).clamp(0, 1), (3 * x - 1).clamp(0, 1), (3 * x - 2).clamp(0, 1)], 1)
    elif name in ("grey", "gray"):
        rgb = x.unsqueeze(1).expand(n, 3)
    else:
        try:
            import matplotlib
        except ImportError as e:
            raise ImportError(f"colormap {name!r} needs matplotlib (pip install matplotlib); "
                              "'hot' and 'grey' are built in") from e
        rgb = torch.as_tensor(matplotlib.colormaps[name](x.numpy())[:, :3])
    return (rgb * 255).round().to(torch.uint8)


def render_heatmap(values: torch.Tensor, image: torch.Tensor | None = None, *, cmap="hot",
                   normalize="image", percentile: float | None = None, overlay: float = 0.5,
                   threshold: float = 0.0, transparent: bool = False, grey: bool = True,
                   brightness: float = 1.0) -> torch.Tensor:
    """A single-channel response map ``(N, H, W)`` as a colour-mapped uint8 heatmap
    ``(N, H, W, 3)`` (the paper's positive / negative focus views). ``cmap``: a name
    for :func:`colormap` or an ``(L, 3)`` lookup table. NaN and values whose
    normalised level is <= threshold are hidden, as in :func:`render`."""
    what = "render_heatmap"
    if not isinstance(values, torch.Tensor) or values.dim() != 3:
        raise ValueError(f"{what}: values must be an (N, H, W) tensor, got "
                         f"{tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}")
    if values.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what}: values must be float32, float64, float16 or bfloat16, got {values.dtype}")
    require_device_support(values, what)
    image = _prepare_image(image, values.shape, values.device, what)
    lut = colormap(cmap) if isinstance(cmap, str) else _palettes.as_palette(cmap)
    scale = compute_scale(values, normalize, percentile)
    v = (values.float() / scale.view(-1, 1, 1)).clamp(0, 1)
    level = (v * (lut.shape[0] - 1) + 0.5).floor().nan_to_num(0).long()
    cls = torch.where(torch.isnan(v) | (v <= threshold), torch.full_like(level, -1), level)
    ones = torch.ones_like(v)
    unit = torch.ones_like(scale)
    # Each level's colour at full value; hidden pixels (class -1) follow the op's policy.
    return _op(cls, ones, unit, lut, image, overlay, -1.0, brightness, grey, transparent, what)


def render_focus(maps, which: str = "positive", image: torch.Tensor | None = None, **kwargs
                 ) -> torch.Tensor:
    """The positive focus (``target_response``: the target class's response map) or
    the negative focus (``rival_response``: per pixel the best other class) as a
    heatmap; keyword arguments as :func:`render_heatmap`."""
    names = {"positive": "target_response", "negative": "rival_response"}
    if which not in names:
        raise ValueError(f"render_focus: which must be 'positive' or 'negative', got {which!r}")
    return render_heatmap(_field(maps, names[which], "render_focus"), image, **kwargs)
