"""A static results page over a finished batch run, and the notebook views of CLEAR maps.

``clear-native report OUT`` (:func:`build_report`) writes ``OUT/report/``:

``index.html``  the page: inline CSS and JavaScript, no server, no network (open it from
    disk). A summary of the run (accuracy, class sensitivity, throughput, errors, one row
    per class), then a grid of CLEAR overlays with label, prediction and the top dominant
    classes, filtered (misclassified / correct / skipped, by class, by how much the
    prediction dominates), sorted and paged (``--page-size``, 200 by default); clicking an
    image opens its view: input, positive / negative focus, CLEAR map, overlay, binary
    map and the class legend. The state (filters, sort, page, open image) lives in the
    address's ``#`` part, so a view can be bookmarked and the browser's back button works.
``data/index.js``  every image's row, columnar (one array per field; shares in per
    mille), the summary and the class names and colours, loaded once by the page with a
    ``<script>`` tag (``file://`` pages cannot ``fetch``). Filtering and sorting 100,000
    rows take milliseconds; only the 200 thumbnails of the page shown are requested, with
    ``loading="lazy"``.
``thumbs/NNNN/IIIIIII.png``  the CLEAR overlay of image ``IIIIIII`` (folder ``NNNN`` =
    index // 1000), at most ``--thumb`` pixels a side (smaller maps keep their size and
    are enlarged by the browser, pixelated).
``detail/NNNN/IIIIIII.png``  the image's views side by side in one strip (one request per
    opened image), each at most ``--panel`` pixels a side.
``report.json``  what the pictures were drawn from (the run's identity, the inputs, the
    sizes). A rerun draws only the pictures that are missing; when ``report.json``
    differs (another run under OUT, other sizes or inputs) or with ``--force``, all.

What the pictures are drawn over (the first that applies; the page says which):

1. the run's ``input`` array (``clear-native explain --store input``): the model's own
   input, exact for any preprocess and any data set;
2. DATA read again through the manifest (an image folder, ``.npz`` / ``.npy``, the built-in
   sample), if it is still there with the fingerprint the run recorded; with
   ``--preprocess imagenet`` through that transform's resize and crop; otherwise, when an
   image's size differs from the maps', resized to them (an approximation: a model's own
   preprocess may crop);
3. nothing: the maps on black, as in the paper (a ``module:function`` data set is not
   called again).

The positive / negative focus and binary views need the run's ``--store focus``; without
it the strip holds the input, the CLEAR map and the overlay.

Notebooks: :func:`maps_png` / :func:`maps_html` (``ClearMaps._repr_png_`` /
``_repr_html_`` and ``Dominance``'s) draw the first few images' CLEAR maps with the class
legend; :func:`maps_xarray` (``ClearMaps.to_xarray()``) gives the maps as an
``xarray.Dataset``.

The package: :mod:`~clear_native.report.data` reads the run and the pictures under its
maps, :mod:`~clear_native.report.thumbnails` draws the pictures,
:mod:`~clear_native.report.page` writes ``data/index.js`` and the page (from
``assets/page.html``, ``page.css``, ``page.js``), :mod:`~clear_native.report.notebook`
the notebook views; this module the entry points (:func:`build_report`, the ``report``
subcommand).
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clear_native.io import BatchError
from clear_native.report.data import Inputs, Run, _json, load_run
from clear_native.report.notebook import NOTEBOOK_IMAGES, maps_html, maps_png, maps_xarray, xarray_spec
from clear_native.report.page import (FORMAT, MAX_ERRORS, PAGE_SIZE, TOP, confusions, index_rows, page_html,
                                      per_class, summary, write_index)
from clear_native.report.thumbnails import PANEL, THUMB, panel_names, picture_path, write_pictures

__all__ = ["FORMAT", "PAGE_SIZE", "THUMB", "PANEL", "TOP", "MAX_ERRORS", "NOTEBOOK_IMAGES", "Run", "load_run",
           "Inputs", "panel_names", "picture_path", "write_pictures", "index_rows", "per_class", "confusions",
           "summary", "write_index", "page_html", "ReportSummary", "build_report", "add_arguments", "main",
           "maps_png", "maps_html", "xarray_spec", "maps_xarray"]

logger = logging.getLogger(__name__)


# -- the report ---------------------------------------------------------------------------

@dataclass
class ReportSummary:
    path: Path            # OUT/report/index.html
    images: int
    drawn: int            # pictures drawn now
    kept: int             # pictures kept from an earlier report
    seconds: float
    inputs: str           # what the maps are drawn over


def build_report(out: str | Path, *, page_size: int = PAGE_SIZE, thumb: int = THUMB, panel: int = PANEL,
                 force: bool = False, progress: bool = False) -> ReportSummary:
    """Writes ``OUT/report/`` (see the module's docstring) for the finished run under ``out``.

    Pictures already drawn by an earlier report of the same run with the same sizes and
    inputs are kept (``force``: all are drawn again). Raises :class:`BatchError` for an
    unfinished run, bad sizes or an unwritable folder.
    """
    t0 = time.perf_counter()
    for name, value, low in (("--page-size", page_size, 1), ("--thumb", thumb, 16), ("--panel", panel, 16)):
        if value < low:
            raise BatchError(f"{name} must be >= {low}, got {value}")
    run = load_run(out)
    inputs = Inputs(run)
    folder = Path(out) / "report"
    panels = panel_names(run, inputs)
    stamp = {"format": FORMAT, "identity": run.manifest.get("identity"), "inputs": inputs.kind,
             "thumb": thumb, "panel": panel, "panels": panels}
    try:
        folder.mkdir(exist_ok=True)
        if force or _json(folder / "report.json") != stamp:
            for kind in ("thumbs", "detail"):  # pictures of another run, size or input: drawn again
                shutil.rmtree(folder / kind, ignore_errors=True)
        (folder / "report.json").write_text(json.dumps(stamp, indent=1, sort_keys=True))
        pics = write_pictures(run, inputs, folder, thumb=thumb, panel=panel, progress=progress)
        write_index(run, inputs, folder, panels, page_size=page_size, thumb=thumb, panel=panel)
        (folder / "index.html").write_text(page_html(), encoding="utf-8")
    except OSError as e:
        raise BatchError(f"cannot write the report under {str(folder)!r}: {e}") from e
    return ReportSummary(folder / "index.html", run.n, pics["drawn"], pics["kept"],
                         time.perf_counter() - t0, inputs.how)


def add_arguments(p) -> None:
    """The ``report`` subcommand's options."""
    p.add_argument("out", metavar="OUT", help="the --out folder of a finished clear-native explain run")
    p.add_argument("--page-size", type=int, default=PAGE_SIZE, help=f"images per page ({PAGE_SIZE})")
    p.add_argument("--thumb", type=int, default=THUMB,
                   help=f"longest side of a thumbnail in pixels ({THUMB}; smaller maps keep their size)")
    p.add_argument("--panel", type=int, default=PANEL,
                   help=f"longest side of each view of an image's page in pixels ({PANEL})")
    p.add_argument("--force", action="store_true", help="draw every picture again (default: only the missing)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def main(args) -> int:
    """Runs the ``report`` subcommand: 0 written, 2 not a finished run / bad arguments."""
    try:
        s = build_report(args.out, page_size=args.page_size, thumb=args.thumb, panel=args.panel,
                         force=args.force, progress=args.progress)
    except BatchError as e:
        print(f"clear-native report: error: {e}", file=sys.stderr)
        return 2
    print(f"clear-native report: {s.images} images; pictures: {s.drawn} drawn, {s.kept} kept from an "
          f"earlier report ({s.seconds:.1f} s); under the maps: {s.inputs}")
    print(f"open {s.path.resolve().as_uri()} in a browser (no server needed)")
    return 0


def __getattr__(name: str):
    """``PAGE``: the page's HTML, as the single-module report exposed it (read on first use)."""
    if name == "PAGE":
        return page_html()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
