"""Notebook views of CLEAR maps: :func:`maps_png` / :func:`maps_html`
(``ClearMaps._repr_png_`` / ``_repr_html_`` and ``Dominance``'s) draw the first few
images' maps with the class legend; :func:`maps_xarray` (``to_xarray()``) gives the
maps as an ``xarray.Dataset``."""
from __future__ import annotations

import base64
import html
import io as _io
from types import SimpleNamespace

import numpy as np
import torch

from clear_native import palettes as _palettes
from clear_native.report.page import _hex

NOTEBOOK_IMAGES = 8


def _shown(maps, max_images: int):
    """The first ``max_images`` images' maps on the CPU, their pictures (k, H, W, 3), the
    palette, the legend [(class, share of the coloured pixels)] and the tiles' display
    scale; None when nothing to draw."""
    from clear_native.render import render

    dc = getattr(maps, "dominant_class", None)
    dr = getattr(maps, "dominant_response", None)
    if not isinstance(dc, torch.Tensor) or dc.dim() != 3 or dc.shape[0] == 0 or dc.device.type == "meta":
        return None
    k = min(int(dc.shape[0]), max_images)
    dc, dr = dc[:k].detach().cpu(), dr[:k].detach().cpu().float()
    c = int(getattr(maps, "num_classes", 0) or 0) or int(dc.max()) + 1
    palette = _palettes.get_palette(max(c, 1))
    pics = render(SimpleNamespace(dominant_class=dc, dominant_response=dr), palette=palette).numpy()
    shares = _palettes.class_shares(dc.reshape(1, -1), palette.shape[0], (dr > 0).reshape(1, -1))[0]
    order = [int(i) for i in torch.argsort(shares, descending=True, stable=True) if shares[i] > 0][:12]
    return pics, palette, [(i, float(shares[i])) for i in order], _tile_scale(*pics.shape[1:3])


def _caption(maps, i: int) -> str:
    parts = [f"#{i}"]
    for name, word in (("prediction", "pred"), ("target", "target")):
        v = getattr(maps, name, None)
        if isinstance(v, torch.Tensor) and v.dim() == 1 and i < v.shape[0]:
            parts.append(f"{word} {int(v[i])}")
    return " ".join(parts)


def _title(maps, shown: int) -> str:
    n, h, w = maps.dominant_class.shape
    how = getattr(maps, "method", None)
    how = f", {how}" + (f" ({maps.signal})" if getattr(maps, "signal", None) else "") if how else ""
    c = getattr(maps, "num_classes", 0)
    return (f"{type(maps).__name__}: {n} image{'s' if n != 1 else ''} {h}x{w}{how}"
            + (f", {c} classes" if c else "") + (f"; the first {shown} shown" if shown < n else ""))


def _tile_scale(h: int, w: int) -> float:
    side = max(h, w)
    return 160 / side if side > 160 else float(max(1, 96 // side))


def maps_png(maps, max_images: int = NOTEBOOK_IMAGES) -> bytes | None:
    """PNG bytes: the first ``max_images`` CLEAR maps in a row, each captioned (index,
    prediction, target), and the legend of the dominant classes (share of the coloured
    pixels). ``ClearMaps._repr_png_`` / ``Dominance._repr_png_``."""
    from PIL import Image, ImageDraw

    got = _shown(maps, max_images)
    if got is None:
        return None
    pics, palette, legend, s = got
    k, h, w = pics.shape[:3]
    th, tw = max(1, round(h * s)), max(1, round(w * s))
    canvas = Image.new("RGB", (max(k * (tw + 8) + 8, 420), th + 70), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), _title(maps, k), fill="black")
    for i in range(k):
        tile = Image.fromarray(pics[i]).resize((tw, th), Image.NEAREST if s >= 1 else Image.BILINEAR)
        canvas.paste(tile, (8 + i * (tw + 8), 20))
        draw.text((8 + i * (tw + 8), 22 + th), _caption(maps, i), fill="black")
    x = 8
    for c, share in legend:
        draw.rectangle((x, th + 44, x + 10, th + 54), fill=tuple(int(v) for v in palette[c]), outline="grey")
        label = f"{c}: {100 * share:.0f}%"
        draw.text((x + 14, th + 43), label, fill="black")
        x += 24 + int(draw.textlength(label))
    buf = _io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def maps_html(maps, max_images: int = NOTEBOOK_IMAGES) -> str | None:
    """HTML: the first ``max_images`` CLEAR maps (inline PNGs), captions and the class
    legend. ``ClearMaps._repr_html_`` / ``Dominance._repr_html_``."""
    from PIL import Image

    got = _shown(maps, max_images)
    if got is None:
        return None
    pics, palette, legend, s = got
    k, h, w = pics.shape[:3]
    figs = []
    for i in range(k):
        buf = _io.BytesIO()
        Image.fromarray(pics[i]).save(buf, format="PNG")
        src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        figs.append(f'<figure style="margin:0 6px 0 0;text-align:center;font-size:11px"><img src="{src}" '
                    f'width="{round(w * s)}" height="{round(h * s)}" style="image-rendering:pixelated" '
                    f'alt="CLEAR map {i}"><figcaption>{html.escape(_caption(maps, i))}</figcaption></figure>')
    chips = "".join(
        f'<span style="margin-right:10px;white-space:nowrap"><span style="display:inline-block;width:10px;'
        f'height:10px;background:{_hex(palette[c:c + 1])[0]};border:1px solid #888"></span> '
        f"{c}: {100 * share:.0f}%</span>" for c, share in legend)
    return (f'<div><div style="font-weight:600">{html.escape(_title(maps, k))}</div>'
            f'<div style="display:flex;flex-wrap:wrap">{"".join(figs)}</div>'
            f'<div style="font-size:12px">dominant class (share of the coloured pixels): {chips}</div></div>')


def xarray_spec(maps, class_names=None) -> dict:
    """The variables, coordinates and attributes of :func:`maps_xarray` as numpy arrays
    (``{"data_vars": {name: (dims, array)}, "coords": ..., "attrs": ...}``)."""
    from dataclasses import fields

    shape = tuple(maps.dominant_class.shape)
    spatial = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}.get(len(shape) - 1) or tuple(
        f"dim_{k}" for k in range(len(shape) - 1))
    dims = {len(shape): ("image", *spatial), 1: ("image",)}
    data_vars = {}
    for f in fields(maps):
        v = getattr(maps, f.name)
        if not isinstance(v, torch.Tensor) or f.name.startswith("state_"):
            continue
        a = v.detach().cpu()
        a = (a.float() if a.dtype in (torch.float16, torch.bfloat16) else a).numpy()
        if f.name == "logits":
            d = ("image", "class")
        elif f.name == "classes":
            d = ("considered",) if a.ndim == 1 else ("image", "considered")
        elif f.name == "class_maps":
            d = ("image", "class" if getattr(maps, "classes", None) is None else "considered", *spatial)
        else:
            d = dims[a.ndim]
        data_vars[f.name] = (d, a)
    c = int(getattr(maps, "num_classes", 0) or 0)
    coords = {"image": np.arange(shape[0]), **{d: np.arange(k) for d, k in zip(spatial, shape[1:])}}
    if c:
        coords["class"] = np.arange(c)
        if class_names is not None:
            if len(class_names) != c:
                raise ValueError(f"to_xarray: {len(class_names)} class names for {c} classes")
            coords["class_name"] = ("class", np.asarray([str(x) for x in class_names]))
    attrs = {k: getattr(maps, k) for k in ("method", "signal", "num_classes")
             if getattr(maps, k, None) is not None}
    return {"data_vars": data_vars, "coords": coords, "attrs": attrs}


def maps_xarray(maps, class_names=None):
    """The maps as an ``xarray.Dataset``: every tensor field a variable with named
    dimensions (``image``, ``y``, ``x``; ``z``, ``y``, ``x`` for volumes; ``class`` for
    logits and class maps; ``considered`` for the ``classes`` considered), integer
    coordinates, ``class_name`` along ``class`` when given, and method / signal /
    num_classes as attributes. Class
    fields keep their int64 ids (-1: none); float16 / bfloat16 become float32.
    Needs xarray (``pip install xarray``), an optional dependency."""
    try:
        import xarray as xr
    except ImportError as e:
        raise ImportError("to_xarray() needs xarray, an optional dependency: pip install xarray "
                          "(or pip install 'clear_native[xarray]')") from e
    spec = xarray_spec(maps, class_names)
    return xr.Dataset(spec["data_vars"], coords=spec["coords"], attrs=spec["attrs"])
