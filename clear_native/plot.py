"""Figures of CLEAR maps in the paper's style (matplotlib, an optional dependency).

    fig = clear_native.plot.figure(maps, images, labels=y, predictions=pred,
                                   class_names=names, path="out/example")  # .png + .pdf
    fig = clear_native.plot.grid(maps, images, labels=y, predictions=pred, path="out/batch.png")

``figure``: one row per example: input | positive focus | negative focus | CLEAR
map | binary for/against map | share of the coloured pixels (positive dominant
response; not the hidden background) each class dominates; under the rows, the
colour-bar legend of class names (with their share of the coloured pixels shown). Titles give the true and predicted labels. ``grid``: a whole batch,
correctly and wrongly classified examples side by side, each as its CLEAR map
over the input.

matplotlib is imported only when a function here is called; figures are built
on the Agg canvas directly (no pyplot state, never shown on screen).
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import torch

from clear_native import palettes as _palettes
from clear_native.render import (_field, _resolve_palette, render, render_binary, render_focus)

__all__ = ["figure", "grid", "class_name"]

MAX_LEGEND = 12  # legend entries before the rest are grouped as "other"


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("clear_native.plot needs matplotlib: pip install matplotlib") from e
    return Figure, FigureCanvasAgg


def class_name(c: int, class_names=None, wrap: int | None = None, short: int | None = None) -> str:
    """The name of class ``c`` from a list or dict (``str(c)`` when absent), wrapped
    to ``wrap`` characters per line, or cut to ``short`` characters."""
    if c is None or c < 0:
        name = "none"
    elif isinstance(class_names, Mapping):
        name = str(class_names.get(c, c))
    elif class_names is not None and c < len(class_names):
        name = str(class_names[c])
    else:
        name = str(c)
    if short and len(name) > short:
        name = name[:short - 1].rstrip() + "\u2026"
    return textwrap.fill(name, wrap) if wrap else name


def _as_list(x, n):
    if x is None:
        return [None] * n
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().reshape(-1).tolist()
    x = [None if v is None else int(v) for v in x]
    if len(x) != n:
        raise ValueError(f"expected {n} labels (one per image), got {len(x)}")
    return x


def _image_hwc(images, i):
    """(H, W, 3) or (H, W) float numpy in [0, 1] for imshow."""
    im = images[i].detach().cpu()
    if im.dim() == 3 and im.shape[0] in (1, 3):
        im = im.permute(1, 2, 0)
    im = im.float() / 255 if images.dtype == torch.uint8 else im.float().clamp(0, 1)
    if im.dim() == 3 and im.shape[-1] == 1:
        im = im[..., 0]
    return im.numpy()


def _legend_classes(classes, num_colours):
    present = _palettes.top_k_classes(classes, num_colours, num_colours)
    if len(present) <= MAX_LEGEND:
        return sorted(present), False
    return sorted(present[:MAX_LEGEND - 1]), True


def _draw_legend(ax, pal, classes_shown, other, class_names, shares, wrap):
    colours = [pal[c].tolist() for c in classes_shown] + ([list(_palettes.OTHER)] if other else [])
    labels = []
    for c in classes_shown:
        labels.append(f"{class_name(c, class_names, wrap)}\n{100 * shares[c]:.0f}%")
    if other:
        rest = sum(v for c, v in enumerate(shares) if c not in set(classes_shown))
        labels.append(f"other\n{100 * rest:.0f}%")
    strip = torch.tensor(colours, dtype=torch.uint8).view(1, -1, 3).numpy() if colours else None
    if strip is not None:
        ax.imshow(strip, aspect="auto", interpolation="nearest")
    ax.set_yticks([])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.tick_params(length=0)
    ax.set_title("dominant class (share of the coloured pixels shown)", fontsize=8)


def _save(fig, path, formats, dpi):
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [path] if path.suffix.lower() in (".png", ".pdf", ".svg") else \
        [path.with_name(path.name + "." + f) for f in formats]
    for p in targets:
        fig.savefig(p, dpi=dpi)


def _common(maps, labels, predictions, palette, num_classes, what: str):
    """What figure() and grid() both take from the maps: the dominant classes, labels and
    predictions as lists (defaults: maps.target and maps.predicted / maps.prediction),
    and the palette."""
    classes_all = _field(maps, "dominant_class", what)
    n = classes_all.shape[0]
    labels = _as_list(labels if labels is not None else getattr(maps, "target", None), n)
    if predictions is None:
        predictions = getattr(maps, "predicted", None)
        if predictions is None:
            predictions = getattr(maps, "prediction", None)
    predictions = _as_list(predictions, n)
    if num_classes is None:
        num_classes = getattr(maps, "num_classes", None) or None
    return classes_all, labels, predictions, _resolve_palette(palette, num_classes, classes_all, what)


def _coloured(maps) -> torch.Tensor:
    """Pixels a CLEAR map colours (positive dominant response), CPU bool (N, H, W): the
    class shares count these, not the hidden background."""
    return (_field(maps, "dominant_response", "figure").detach().cpu() > 0)


def figure(maps, images: torch.Tensor | None = None, *, labels=None, predictions=None,
           class_names: Sequence[str] | Mapping[int, str] | None = None,
           indices: Sequence[int] | None = None, max_rows: int = 8, palette=None,
           num_classes: int | None = None, normalize="image", percentile: float | None = None,
           overlay: float = 0.5, cmap: str = "hot", path=None, formats=("png", "pdf"),
           dpi: int = 100, wrap: int = 14, panel_size: float = 1.8):
    """The paper's comparison figure; returns the matplotlib ``Figure``.

    Args:
        maps: ``Dominance`` / ``ClearMaps`` (``dominant_class``, ``dominant_response``;
            with ``target_response`` / ``rival_response`` the focus and binary
            columns are added).
        images: the inputs ``(N, 3 or 1, H, W)`` (uint8 or float in [0, 1]), optional.
        labels, predictions: true and predicted classes ``(N,)``; default
            ``maps.target`` and ``maps.predicted`` / ``maps.prediction`` if present.
        class_names: a list or a dict {class id: name}; long names are wrapped to
            ``wrap`` characters.
        indices: which examples (default the first ``max_rows``).
        palette, num_classes, normalize, percentile, overlay: as :func:`clear_native.render`.
        path: where to save: with a suffix (.png/.pdf/.svg) that file, else one file per
            entry of ``formats`` (``path.png`` and ``path.pdf``).
    """
    Figure, FigureCanvasAgg = _matplotlib()
    classes_all, labels, predictions, pal = _common(maps, labels, predictions, palette, num_classes,
                                                    "figure")
    n = classes_all.shape[0]
    rows = list(indices) if indices is not None else list(range(min(n, max_rows)))
    cols = _figure_columns(maps, images, pal, cmap=cmap, overlay=overlay,
                           normalize=normalize, percentile=percentile)
    ncols = len(cols) + 1  # + the share bars

    classes_cpu = classes_all.detach().cpu()
    coloured = _coloured(maps)
    shares = _palettes.class_shares(classes_cpu, pal.shape[0], coloured)
    shown = classes_cpu[rows]
    mean_share = _palettes.class_shares(shown.reshape(1, -1), pal.shape[0],
                                        coloured[rows].reshape(1, -1))[0].tolist()
    legend_classes, other = _legend_classes(shown, pal.shape[0])

    height = panel_size * len(rows) * 1.2 + 1.8
    fig = Figure(figsize=(panel_size * ncols, height))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(len(rows) + 1, ncols, height_ratios=[1.0] * len(rows) + [0.25],
                          left=0.03, right=0.98, top=1 - 0.3 / height, bottom=0.85 / height,
                          hspace=0.35, wspace=0.15)
    for r, i in enumerate(rows):
        title, colour = _row_title(labels[i], predictions[i], class_names, wrap)
        for k, (name, pics) in enumerate(cols):
            ax = fig.add_subplot(gs[r, k])
            _draw_panel(ax, images, pics, i)
            if r == 0:
                ax.set_title(name, fontsize=8)
            if k == 0:
                ax.set_ylabel("\n".join(title) or f"#{i}", fontsize=7, color=colour)
        _draw_share_bars(fig.add_subplot(gs[r, ncols - 1]), shares[i], pal, class_names, wrap, first=r == 0)
    _draw_legend(fig.add_subplot(gs[len(rows), :]), pal, legend_classes, other, class_names,
                 mean_share, wrap)
    _save(fig, path, formats, dpi)
    return fig


def _figure_columns(maps, images, pal, *, cmap, overlay, normalize, percentile) -> list:
    """The picture columns of :func:`figure`, [(title, (N, H, W, 3) CPU pictures)]: the
    input (None: drawn from ``images``), the focus maps, the CLEAR map, the overlay and
    the binary map, each where the maps / inputs allow it."""
    has_focus = getattr(maps, "target_response", None) is not None and \
        getattr(maps, "rival_response", None) is not None
    kw = dict(normalize=normalize, percentile=percentile)
    clear = render(maps, palette=pal, **kw).cpu()
    cols = [("input", None)] if images is not None else []
    if has_focus:
        cols += [("positive focus", render_focus(maps, "positive", cmap=cmap, **kw).cpu()),
                 ("negative focus", render_focus(maps, "negative", cmap=cmap, **kw).cpu())]
    cols += [("CLEAR map", clear)]
    if images is not None:
        cols += [("CLEAR overlay", render(maps, images, palette=pal, overlay=overlay, **kw).cpu())]
    if has_focus:
        cols += [("for (red) / against (blue)", render_binary(maps, **kw).cpu())]
    return cols


def _row_title(truth, pred, class_names, wrap: int) -> tuple[list[str], str]:
    """A row's label lines ("true: ...", "pred: ...") and their colour: green when the
    prediction is right, red when wrong, black when either is unknown."""
    title = []
    if truth is not None:
        title.append(f"true: {class_name(truth, class_names, short=2 * wrap)}")
    if pred is not None:
        title.append(f"pred: {class_name(pred, class_names, short=2 * wrap)}")
    colour = "black" if truth is None or pred is None else ("green" if truth == pred else "red")
    return title, colour


def _draw_panel(ax, images, pics, i: int) -> None:
    """Image ``i`` of one column: the input (``pics`` None) or its rendered picture."""
    ax.set_xticks([])
    ax.set_yticks([])
    if pics is None:
        im = _image_hwc(images, i)
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
    else:
        ax.imshow(pics[i].numpy(), interpolation="nearest")


def _draw_share_bars(ax, shares: torch.Tensor, pal, class_names, wrap: int, *, first: bool) -> None:
    """The last column of a row: bars of the (at most 4) classes that dominate most of the
    image's coloured pixels, in their colours."""
    top = sorted(range(pal.shape[0]), key=lambda c: -float(shares[c]))[:4]
    top = [c for c in top if shares[c] > 0]
    values = [100 * float(shares[c]) for c in top]
    ax.barh(range(len(top)), values, color=[(pal[c].float() / 255).tolist() for c in top])
    for y, (c, val) in enumerate(zip(top, values)):
        ax.text(2, y, f"{class_name(c, class_names, short=wrap)} {val:.0f}%", va="center",
                fontsize=6)
    ax.set_yticks([])
    ax.set_ylim(3.6, -0.6)
    ax.set_xlim(0, 100)
    ax.tick_params(axis="x", labelsize=6)
    if first:
        ax.set_title("% of image dominated", fontsize=8)


def grid(maps, images: torch.Tensor | None = None, *, labels=None, predictions=None,
         class_names=None, max_per_side: int = 16, ncols: int = 4, palette=None,
         num_classes: int | None = None, normalize="image", percentile: float | None = None,
         overlay: float = 0.5, path=None, formats=("png", "pdf"), dpi: int = 100, wrap: int = 14,
         panel_size: float = 1.5):
    """A whole batch: correctly classified examples on the left, wrongly classified
    on the right (each at most ``max_per_side``), every one as its CLEAR map (over the
    input when ``images`` is given), titled with true and predicted label; the
    class legend underneath. Needs ``labels`` and ``predictions`` (or
    ``maps.target`` / ``maps.predicted``). Returns the ``Figure``; ``path`` as
    :func:`figure`."""
    Figure, FigureCanvasAgg = _matplotlib()
    classes_all, labels, predictions, pal = _common(maps, labels, predictions, palette, num_classes,
                                                    "grid")
    n = classes_all.shape[0]
    if any(v is None for v in labels + predictions):
        raise ValueError("grid: needs labels and predictions for every image")
    pics = render(maps, images, palette=pal, normalize=normalize, percentile=percentile,
                  overlay=overlay).cpu()
    correct = [i for i in range(n) if labels[i] == predictions[i]]
    wrong = [i for i in range(n) if labels[i] != predictions[i]]
    sides = [(f"correct ({len(correct)})", correct[:max_per_side]),
             (f"wrong ({len(wrong)})", wrong[:max_per_side])]
    nrows = max(1, max((len(s) + ncols - 1) // ncols for _, s in sides))
    height = panel_size * nrows * 1.25 + 2.0  # tiles with titles, side titles, legend
    fig = Figure(figsize=(panel_size * (2 * ncols + 0.5), height))
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(2, 2, height_ratios=[panel_size * nrows * 1.25, 0.35], left=0.02,
                             right=0.98, top=1 - 0.75 / height, bottom=0.85 / height, wspace=0.08,
                             hspace=0.6 / (panel_size * nrows))
    for s, (title, idx) in enumerate(sides):
        sub = outer[0, s].subgridspec(nrows, ncols, hspace=0.5, wspace=0.1)
        for k in range(nrows * ncols):
            ax = fig.add_subplot(sub[k // ncols, k % ncols])
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(idx):
                ax.set_axis_off()
                continue
            i = idx[k]
            ax.imshow(pics[i].numpy(), interpolation="nearest")
            ax.set_title(f"true: {class_name(labels[i], class_names, short=wrap)}\n"
                         f"pred: {class_name(predictions[i], class_names, short=wrap)}", fontsize=6,
                         color="green" if s == 0 else "red")
        fig.text(0.25 + 0.5 * s, 1 - 0.25 / height, title, ha="center", fontsize=10)
    shown = classes_all.detach().cpu()
    share = _palettes.class_shares(shown.reshape(1, -1), pal.shape[0],
                                   _coloured(maps).reshape(1, -1))[0].tolist()
    legend_classes, other = _legend_classes(shown, pal.shape[0])
    _draw_legend(fig.add_subplot(outer[1, :]), pal, legend_classes, other, class_names, share, wrap)
    _save(fig, path, formats, dpi)
    return fig
