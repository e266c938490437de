"""Batch explanation of a whole data set, resumable, on one or many processes.

``clear-native explain --model MODEL --data DATA --out OUT`` (or :func:`run`) explains
every image of DATA with CLEAR and writes, under ``OUT``:

``OUT/clear.zarr/<name>``  Zarr (v3) arrays, first axis = data set index ``i``
    (``zarr.open("OUT/clear.zarr/dominant_class")`` opens one lazily as a whole array;
    chunks hold ``--batch-size`` images):

    * always: ``prediction`` (N,), ``target`` (N,), ``label`` (N,) int64 (-1: none),
      ``logits`` (N, C) float32, ``valid`` (N,) bool (False: the image could not be read,
      or it or the model's logits for it held a NaN / infinite value).
    * ``--store dominant``: ``dominant_class`` (N, H, W)
    * ``--store response``: ``dominant_response`` (N, H, W)
    * ``--store runner_up``: ``runner_up_class``, ``runner_up_response``
    * ``--store focus``: ``target_response`` (positive focus), ``rival_class`` and
      ``rival_response`` (negative focus) of ``target``: the prediction, or with
      ``--classes LIST`` the listed class with the highest logit
    * ``--store weakest``: ``weakest_class``, ``weakest_response``
    * ``--store input``: ``input`` (N, ch, H, W) uint8, the model's input as a picture:
      the preprocessed image times 255 where it lies in [0, 1], else stretched to 0-255
      per channel (a normalised image); what ``clear-native report`` shows the maps over

    Class arrays use the smallest signed integer type that holds C (int8 up to 127
    classes, int16 up to 32767, else int32) with ``-1`` for "no class"; responses are
    float16 (default) or float32 (``--response-dtype``), NaN for none. Rows of images
    that could not be read keep the fill values (-1 / NaN / logits NaN).
``OUT/table.parquet`` (or ``table.csv``)  one row per image: ``index``, ``key`` (path
    relative to DATA, or the index), ``label``, ``prediction``, ``valid``,
    ``prediction_share`` (the prediction share, :func:`clear_native.metrics.prediction_share`:
    of the coloured pixels, those with a dominant response > 0, the share whose dominant
    class is the prediction; null without such pixels), ``top_dominant`` (the class
    dominating most pixels), ``agrees`` (top_dominant == prediction), ``strong_share``
    (share of "strong" pixels: dominant response at least 0.1 x the image's largest;
    background pixels with no evidence are not strong) and ``prediction_share_strong``
    (share of the strong pixels dominated by the prediction), ``dominant_classes`` /
    ``dominant_shares`` (every class dominating at least one pixel, with its share of all
    the pixels), ``error``. (A pixel where every class responds 0, e.g. black background
    under deconvnet, is a tie and goes to class 0: it counts for class 0 in
    ``dominant_shares``, in neither prediction share.)
``OUT/errors.json``  ``[{"index", "key", "reason"}]`` of the images that were skipped.
``OUT/manifest.json``  arguments, versions, model / data fingerprints, shapes, counts,
    errors, the time spent reading data, explaining and writing, and ``results``
    (:func:`run_results`: accuracy over the explained images with a label, how much the
    prediction dominates; for the built-in sample, how it was drawn). Written last: its
    presence means the run is complete. ``arguments.signal`` and ``identity.signal``
    hold the back-projected signal actually used (``"response"``: the class map's
    response, the default of deconvnet / guided / gradient; ``"logit"``: the gradient
    of the class logit, ``--signal logit``; ``null`` for ``--method cam``).
``OUT/run.json``, ``OUT/arrays.json``, ``OUT/chunks/*.json``, ``OUT/.lock``  the run's
    identity (the options that change the results, ``signal`` included), the arrays'
    record (identity, arguments, each array's Zarr metadata), one commit record per chunk
    (written with write-then-rename after the chunk's arrays are written and flushed; it
    holds each chunk file's size and SHA-256) and the lock a run holds on OUT (see
    :mod:`clear_native.store`; ``clear-native verify OUT [--repair]`` checks it all).

A run killed at any moment and started again with the same arguments redoes only the
chunks without a sound commit record (a resume checks every committed chunk file against
its record and redoes, and reports, those that fail), and ends with the same results as
an uninterrupted run. A second run on an OUT in use exits 2. A full disk or an unwritable
OUT exits 2; the chunks committed so far are kept.
Another model / data / result-changing option (``--method``, ``--signal``, ...) under the
same OUT is refused, naming the options that differ and their two values, unless
``--overwrite`` (which starts afresh, deleting what a run wrote under OUT; it refuses an
OUT that holds anything else). OUT must not be, lie inside or contain DATA. Under
``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK set) chunk ``k`` is explained by rank
``k % WORLD_SIZE``; rank 0 writes the table and manifest once every rank is done.
The results do not depend on the number of processes, and a run may be
resumed with another number of processes. Across nodes, OUT must be on a file system
that every node sees. Exit status: 0, 2 (bad arguments), 3 (some images skipped; under
torchrun the launcher reports any non-zero status as a failure).

Modules: :mod:`~clear_native.batch.options` (:class:`BatchOptions`), :mod:`~clear_native.batch.dist`
(torchrun), :mod:`~clear_native.batch.explainer` (model, explainer, probe),
:mod:`~clear_native.batch.runstore` (OUT as the run sees it: :class:`RunStore`, the writer
thread), :mod:`~clear_native.batch.chunk` (one chunk's results), :mod:`~clear_native.batch.loop`
(:func:`run`), :mod:`~clear_native.batch.finalize` (table, manifest, :func:`run_results`),
:mod:`~clear_native.batch.cli_args` (the ``explain`` subcommand).
"""
from __future__ import annotations

from clear_native.batch.chunk import input_pictures
from clear_native.batch.cli_args import add_arguments, main, options_from_args
from clear_native.batch.finalize import run_results, summary_lines
from clear_native.batch.loop import run
from clear_native.batch.options import (EXIT_ERRORS, EXIT_OK, EXIT_USAGE, FORMAT, SHAPE_SAMPLE, STORE_CHOICES,
                                        STRONG, BatchOptions, BatchSummary, class_dtype, parse_classes)
from clear_native.batch.runstore import RunStore
from clear_native.io import BatchError

__all__ = ["BatchOptions", "BatchSummary", "BatchError", "RunStore", "run", "main", "add_arguments",
           "options_from_args", "summary_lines", "run_results", "input_pictures", "class_dtype", "parse_classes",
           "FORMAT", "EXIT_OK", "EXIT_USAGE", "EXIT_ERRORS", "STORE_CHOICES", "STRONG", "SHAPE_SAMPLE"]
