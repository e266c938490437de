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
    ``prediction_share`` (share of the pixels whose dominant class is the prediction),
    ``top_dominant`` (the class dominating most pixels), ``agrees`` (top_dominant ==
    prediction), ``strong_share`` (share of "strong" pixels: dominant response at least
    0.1 x the image's largest; background pixels with no evidence are not strong) and
    ``prediction_share_strong`` (share of the strong pixels dominated by the prediction),
    ``dominant_classes`` / ``dominant_shares`` (every class dominating at least one
    pixel, with its share of the pixels), ``error``. (A pixel where every class
    responds 0, e.g. black background under deconvnet, is a tie and goes to class 0.)
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
OUT that holds anything else). OUT must not be, lie inside or contain DATA. Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK set) chunk ``k`` is
explained by rank ``k % WORLD_SIZE``; rank 0 writes the table and manifest once every
rank is done. The results do not depend on the number of processes, and a run may be
resumed with another number of processes. Across nodes, OUT must be on a file system
that every node sees. Exit status: 0, 2 (bad arguments), 3 (some images skipped; under
torchrun the launcher reports any non-zero status as a failure).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from clear_native import store as _store
from clear_native.io import (MAX_PIXELS, PREPROCESS_CHOICES, BatchError, DataSource, LoadedModel, load_data,
                             load_model, resolve_preprocess, to_chw_float)

logger = logging.getLogger(__name__)

FORMAT = "clear-native-batch/1"
EXIT_OK, EXIT_USAGE, EXIT_ERRORS = 0, 2, 3
STORE_CHOICES = ("dominant", "response", "runner_up", "focus", "weakest", "input", "png")
_STORE_FIELDS = {
    "dominant": (("dominant_class", "class"),),
    "response": (("dominant_response", "response"),),
    "runner_up": (("runner_up_class", "class"), ("runner_up_response", "response")),
    "focus": (("target_response", "response"), ("rival_class", "class"), ("rival_response", "response")),
    "weakest": (("weakest_class", "class"), ("weakest_response", "response")),
}
# Test hook: seconds to sleep between writing a chunk's arrays and committing it.
_DELAY_ENV = "CLEAR_NATIVE_BATCH_TEST_DELAY"


@dataclass
class BatchOptions:
    """Arguments of a batch run (the command line's options)."""

    out: str
    model: str | None = None
    data: str | None = None
    method: str = "deconvnet"
    signal: str | None = None     # "response" / "logit"; None: the method's default (none for "cam")
    classes: str = "all"          # "all", "top-K" or a comma-separated list of class ids
    batch_size: int = 64          # images per batch = per Zarr chunk = per commit
    device: str = "cpu"           # "cpu", "cuda", "cuda:1", "auto"
    dtype: str = "float32"        # model and input dtype: float32 / float64 / bfloat16 / float16
    autocast: str | None = None   # None, "bfloat16" or "float16": torch.autocast around the model
    workers: int = 0              # DataLoader worker processes
    store: tuple[str, ...] = ("dominant", "response")
    response_dtype: str = "float16"
    table: str = "parquet"        # "parquet" or "csv"
    overwrite: bool = False
    progress: bool = True
    trust_model_code: bool = False  # load a .pt2 file (torch.export.load can run code in it)
    max_pixels: int = MAX_PIXELS  # larger image files (from the header) are per-image errors; 0: no cap
    hash_data: bool = False       # fingerprint an image folder by contents (default: file metadata)
    preprocess: str | None = None  # "imagenet", "none", "package.module:callable"; None: the model's / data's own
    weights: str | None = None    # a state_dict file loaded into the model (torch.load(weights_only=True))

    def resolved_signal(self) -> str | None:
        """The signal the run back-projects: ``signal``, or the method's default
        (:data:`clear_native.explain.DEFAULT_SIGNAL`); None for ``"cam"``."""
        from clear_native.explain import DEFAULT_SIGNAL

        if self.signal is not None:
            return self.signal
        return DEFAULT_SIGNAL.get(self.method)

    def identity(self) -> dict:
        """The options that change the results (compared when resuming)."""
        return {k: getattr(self, k) for k in ("method", "classes", "batch_size", "dtype", "autocast",
                                              "response_dtype", "table")} | {
            "signal": self.resolved_signal(), "store": sorted(self.store)} | (
            # which images are skipped; recorded only when not the default (older runs match)
            {"max_pixels": self.max_pixels} if self.max_pixels != MAX_PIXELS else {}) | (
            {"preprocess": self.preprocess} if self.preprocess is not None else {})


@dataclass
class BatchSummary:
    out: str
    images: int
    explained: int
    errors: list[dict]
    chunks: int
    chunks_run: int               # chunks explained by this invocation (all ranks)
    wall_s: float
    images_per_s: float
    timings: dict = field(default_factory=dict)
    redone: list = field(default_factory=list)  # [{"chunk", "reason"}]: committed chunks that failed the check
    results: dict = field(default_factory=dict)  # accuracy and dominance over the run (manifest "results")

    @property
    def exit_code(self) -> int:
        return EXIT_ERRORS if self.errors else EXIT_OK


# -- small helpers ------------------------------------------------------------------------

def class_dtype(num_classes: int) -> np.dtype:
    """Smallest signed integer type holding class ids 0..C-1 and -1."""
    if num_classes <= 127:
        return np.dtype(np.int8)
    if num_classes <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def parse_classes(spec: str | None, num_classes: int | None = None):
    """``"all"`` -> None, ``"top-K"`` -> K, ``"1,2,3"`` -> [1, 2, 3].

    Negative or repeated ids are refused; with ``num_classes`` (the model's C), so are
    ids >= C and K > C (:class:`BatchError`, exit status 2)."""
    if spec is None or spec == "all":
        return None
    if spec.startswith("top-"):
        try:
            k = int(spec[4:])
        except ValueError:
            k = 0
        if k < 1:
            raise BatchError(f"--classes {spec!r}: top-K needs an integer K >= 1")
        if num_classes is not None and k > num_classes:
            raise BatchError(f"--classes {spec!r}: K = {k} is more than the model's {num_classes} classes")
        return k
    try:
        ids = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        ids = []
    if not ids:
        raise BatchError(f"--classes {spec!r}: expected 'all', 'top-K' or a comma-separated list of class ids")
    negative = [i for i in ids if i < 0]
    if negative:
        raise BatchError(f"--classes {spec!r}: class ids are >= 0, got {negative}")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise BatchError(f"--classes {spec!r}: class id(s) {repeated} given more than once")
    if num_classes is not None:
        out = [i for i in ids if i >= num_classes]
        if out:
            raise BatchError(f"--classes {spec!r}: class id(s) {out} out of range: the model has "
                             f"{num_classes} classes (ids 0 to {num_classes - 1})")
    return ids


# Looked up at call time (the fault-injection tests replace it): the store's atomic write.
_write_json_atomic = _store.write_json_atomic


def _read_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class _Dist:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, and the process group when > 1."""

    def __init__(self, device: str):
        def env_int(name: str, default: int) -> int:
            v = os.environ.get(name, "")
            try:
                return int(v) if v.strip() else default
            except ValueError:
                raise BatchError(f"{name}={v!r} is not an integer (torchrun sets RANK / WORLD_SIZE / "
                                 "LOCAL_RANK; unset them to run one process)") from None

        self.rank = env_int("RANK", 0)
        self.world = env_int("WORLD_SIZE", 1)
        self.local_rank = env_int("LOCAL_RANK", 0)
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise BatchError(f"RANK={self.rank} with WORLD_SIZE={self.world} (unset: 1) is no process group "
                             "(0 <= RANK < WORLD_SIZE): launch with torchrun, or unset RANK / WORLD_SIZE to "
                             "run one process")
        self.active = self.world > 1
        if self.active and not torch.distributed.is_initialized():
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
            if missing:
                raise BatchError(f"RANK={self.rank} / WORLD_SIZE={self.world} are set but {' / '.join(missing)} "
                                 "not: there is no process group to join; launch with torchrun, or unset "
                                 "RANK / WORLD_SIZE to run one process")
            backend = "nccl" if device.startswith("cuda") and torch.distributed.is_nccl_available() else "gloo"
            try:
                if backend == "nccl":
                    torch.cuda.set_device(self.local_rank)
                torch.distributed.init_process_group(backend)
            except (RuntimeError, ValueError) as e:
                raise BatchError(f"cannot join the process group (RANK={self.rank}, WORLD_SIZE={self.world}, "
                                 f"{backend}): {e}") from e
            self._own = True
        else:
            self._own = False

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self._own and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# -- reading ------------------------------------------------------------------------------

class _Items(torch.utils.data.Dataset):
    """Items of a data source as (index, image (ch, H, W) | None, label, error | None)."""

    def __init__(self, source: DataSource, preprocess: Callable | None):
        self.reader = source.reader
        self.preprocess = preprocess
        self.n = len(source)
        self.keys = source.keys

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        try:
            img, label = self.reader.read(i)
            return i, to_chw_float(img, self.preprocess), int(label), None
        except Exception as e:  # noqa: BLE001 - a bad image is recorded, never fatal
            try:  # the label is often known without reading the image (class sub-folders)
                label = int(self.reader.label(i)) if hasattr(self.reader, "label") else -1
            except Exception:  # noqa: BLE001
                label = -1
            return i, None, label, f"{type(e).__name__}: {e}"


class _Collate:
    def __init__(self, shape: tuple[int, ...] | None):
        self.shape = shape

    def __call__(self, items):
        good, errors, labels, indices = [], [], [], []
        for i, img, label, err in items:
            indices.append(i)
            labels.append(label)
            if err is None and self.shape is not None and tuple(img.shape) != self.shape:
                err = f"image shape {tuple(img.shape)} differs from the run's {self.shape}"
            if err is not None:
                errors.append((i, err))
            else:
                good.append((i, img))
        images = torch.stack([g[1] for g in good]) if good else None
        return {"indices": indices, "labels": labels, "good": [g[0] for g in good],
                "images": images, "errors": errors}


# -- the run ------------------------------------------------------------------------------

def _default_explainer(model: torch.nn.Module, method: str, signal: str | None = None):
    """:class:`clear_native.Clear` for ``method`` (``signal``: None = the method's default)."""
    import clear_native

    if not hasattr(clear_native, "Clear"):
        raise BatchError("clear_native.Clear is not available in this build")
    return clear_native.Clear(model, method=method, signal=signal)


def _resolve_device(device: str, dist: _Dist) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BatchError(f"--device {device!r}: CUDA is not available")
        if device == "cuda":
            device = f"cuda:{dist.local_rank}" if dist.active else "cuda"
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise BatchError(f"--device {device!r}: {e}") from e


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


def _check_options(o: BatchOptions) -> None:
    if o.batch_size < 1:
        raise BatchError(f"--batch-size must be >= 1, got {o.batch_size}")
    if o.workers < 0:
        raise BatchError(f"--workers must be >= 0, got {o.workers}")
    if o.max_pixels is not None and o.max_pixels < 0:
        raise BatchError(f"--max-pixels must be >= 0 (0: no limit), got {o.max_pixels}")
    if o.dtype not in _DTYPES:
        raise BatchError(f"--dtype must be one of {sorted(_DTYPES)}, got {o.dtype!r}")
    if o.autocast not in (None, "bfloat16", "float16"):
        raise BatchError(f"--autocast must be bfloat16 or float16, got {o.autocast!r}")
    from clear_native.explain import DEFAULT_SIGNAL, SIGNALS

    if o.signal is not None:
        if o.signal not in SIGNALS:
            raise BatchError(f"--signal must be one of {', '.join(SIGNALS)}, got {o.signal!r}")
        if o.method not in DEFAULT_SIGNAL:
            raise BatchError(f"--signal applies to the back-projection methods ({', '.join(DEFAULT_SIGNAL)}); "
                             f"--method {o.method} projects its class maps directly: drop --signal")
    if o.response_dtype not in ("float16", "float32"):
        raise BatchError(f"--response-dtype must be float16 or float32, got {o.response_dtype!r}")
    if o.table not in ("parquet", "csv"):
        raise BatchError(f"--table must be parquet or csv, got {o.table!r}")
    bad = [s for s in o.store if s not in STORE_CHOICES]
    if bad:
        raise BatchError(f"--store: unknown item(s) {bad}; choose from {', '.join(STORE_CHOICES)}")
    parse_classes(o.classes)
    if o.preprocess is not None and o.preprocess not in PREPROCESS_CHOICES and ":" not in o.preprocess:
        raise BatchError(f"--preprocess {o.preprocess!r}: expected {', '.join(PREPROCESS_CHOICES)} or "
                         "package.module:callable")
    if "png" in o.store:
        import importlib.util

        if importlib.util.find_spec("clear_native.render") is None:
            raise BatchError("--store png needs clear_native.render (the CLEAR image renderer), which "
                             "this build does not have; drop 'png' from --store")
    if o.table == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise BatchError("--table parquet needs pyarrow (pip install pyarrow); or use --table csv") from e
    try:
        import zarr  # noqa: F401
    except ImportError as e:
        raise BatchError("batch explanation writes Zarr arrays: pip install 'zarr>=3'") from e


SHAPE_SAMPLE = 16  # the run's image shape: the most common among this many first readable images


def _probe(items: _Items, explain: Callable, device, dtype, autocast_ctx, classes, n: int,
           model=None, classes_spec: str | None = None, sample: int = SHAPE_SAMPLE):
    """(image shape, map shape, C).

    The run's image shape is the most common (ch, H, W) among the first ``sample``
    readable images (a tie: the shape seen first), so one stray image sorting first does
    not decide it; images of another shape become per-image errors naming both shapes.
    C comes from the model's logits for the first image of that shape (``--classes`` is
    checked against it), the map shape from explaining that image.
    """
    counts: dict[tuple, int] = {}
    first: dict[tuple, torch.Tensor] = {}
    reasons: list[str] = []
    failed = 0
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
    x = first[shape][None].to(device, dtype)
    try:
        if model is not None and classes_spec is not None:
            with torch.no_grad(), autocast_ctx():
                logits = model(x)
            if isinstance(logits, torch.Tensor) and logits.dim() == 2:
                parse_classes(classes_spec, int(logits.shape[1]))
        with autocast_ctx():
            maps = explain(x, None, classes)
    except ValueError as e:  # Clear's message for a model it cannot explain this way
        raise BatchError(f"cannot explain this model with these options (--method / --signal / "
                         f"--classes): {e}") from e
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as e:  # e.g. 1-channel images for an RGB model, or unresized photos
        from clear_native.io import _first_lines

        raise BatchError(f"the model fails on the images of DATA as preprocessed (the first has shape "
                         f"{shape}): {type(e).__name__}: {_first_lines(str(e), 2)}; give a --preprocess "
                         f"that makes them what the model expects (--preprocess imagenet: 3 x 224 x 224, "
                         f"ImageNet mean / std)") from e
    return shape, tuple(maps.dominant_class.shape[1:]), int(maps.logits.shape[1])


def _shown(identity: dict, key: str) -> str:
    """``identity[key]`` for a message (fingerprints shortened; absent: not recorded)."""
    if key not in identity:
        return "(not recorded)"
    v = identity[key]
    if isinstance(v, str) and len(v) > 24:
        v = v[:12] + "..."
    return json.dumps(v)


def _create_arrays(out: Path, o: BatchOptions, n: int, map_shape, num_classes: int, identity: dict,
                   img_shape=None):
    """Creates (or, resuming, checks and restores without touching a chunk file) the arrays
    under ``OUT/clear.zarr`` and ``OUT/arrays.json`` (see :func:`clear_native.store.ensure_arrays`)."""
    cdt = class_dtype(num_classes)
    rdt = np.dtype(o.response_dtype)
    specs = {"prediction": ((n,), cdt, -1), "target": ((n,), cdt, -1), "label": ((n,), np.int64, -1),
             "logits": ((n, num_classes), np.float32, np.nan), "valid": ((n,), np.bool_, False)}
    for item in o.store:
        for name, kind in _STORE_FIELDS.get(item, ()):
            specs[name] = ((n, *map_shape), cdt if kind == "class" else rdt, -1 if kind == "class" else np.nan)
    if "input" in o.store:
        specs["input"] = ((n, *img_shape), np.uint8, 0)
    arguments = asdict(o) | {"store": list(o.store), "signal": o.resolved_signal()}
    _store.ensure_arrays(out, specs, o.batch_size, identity, arguments)
    return specs


STRONG = 0.1  # "strong" pixels: dominant response >= STRONG x the image's largest


def _chunk_stats(dc: np.ndarray, dr: np.ndarray, pred: np.ndarray, num_classes: int) -> list[dict]:
    """Per-image dominance statistics of (n, H, W) dominant classes / responses."""
    rows = []
    hw = dc[0].size if len(dc) else 1
    for k in range(len(dc)):
        flat = dc[k].reshape(-1)
        resp = np.nan_to_num(dr[k].reshape(-1).astype(np.float32), nan=-np.inf)
        top_resp = resp.max() if resp.size else 0.0
        strong = (resp >= STRONG * top_resp) & (flat >= 0) if top_resp > 0 else np.zeros_like(flat, bool)
        n_strong = int(strong.sum())
        counts = np.bincount(flat[flat >= 0].astype(np.int64), minlength=num_classes)
        present = np.nonzero(counts)[0]
        top = int(counts.argmax()) if counts.sum() else -1
        rows.append({
            "prediction_share": float(np.float32(counts[pred[k]] / hw)) if pred[k] >= 0 else None,
            "top_dominant": top,
            "agrees": bool(top == pred[k]),
            "strong_share": float(np.float32(n_strong / hw)),
            "prediction_share_strong": (float(np.float32((flat[strong] == pred[k]).sum() / n_strong))
                                        if n_strong and pred[k] >= 0 else None),
            "dominant_classes": present.tolist(),
            "dominant_shares": [float(np.float32(c / hw)) for c in counts[present]],
        })
    return rows


def _chunk_ranges(n: int, b: int) -> list[tuple[int, int]]:
    return [(s, min(s + b, n)) for s in range(0, n, b)]


def run(options: BatchOptions, *, explainer: Callable[[torch.nn.Module, str], Callable] | None = None,
        model: LoadedModel | None = None, data: DataSource | None = None) -> BatchSummary:
    """Explains every image of ``options.data`` and writes the results under ``options.out``.

    Args:
        options: the run's arguments (see :class:`BatchOptions`).
        explainer: ``explainer(model, method)`` -> a callable
            ``(images (N, ch, H, W), target, classes)`` returning an object with the
            fields of :class:`clear_native.ClearMaps` (default:
            ``clear_native.Clear(model, method, signal=options.signal)``). A custom hook
            is still called with ``(model, method)`` only: it chooses its own signal,
            and when the object it returns has a ``signal`` attribute (as ``Clear``
            has), that must equal the run's (``options.resolved_signal()``, which the
            manifest records), else :class:`BatchError`.
        model, data: already loaded inputs (default: from ``options.model`` / ``.data``).

    Returns:
        A :class:`BatchSummary` (``exit_code`` is 3 when some images were skipped).

    Raises:
        BatchError: bad arguments or inputs, with a message for the user.
    """
    t_start = time.perf_counter()
    o = options
    _check_options(o)
    dist = _Dist(o.device)
    with contextlib.ExitStack() as stack:  # unwinds: writer thread, lock on OUT, process group
        stack.callback(dist.close)
        return _run(o, dist, explainer, model, data, t_start, stack)


def _run(o, dist, explainer, loaded, source, t_start, stack: contextlib.ExitStack) -> BatchSummary:
    device = _resolve_device(o.device, dist)
    dtype = _DTYPES[o.dtype]
    classes = parse_classes(o.classes)
    loaded = loaded or load_model(o.model, trust_code=o.trust_model_code, weights=o.weights)
    source = source or load_data(o.data, max_pixels=o.max_pixels or None, hash_contents=o.hash_data)
    n = len(source)
    if n == 0:
        raise BatchError(f"--data {source.spec!r} holds no items")
    model = loaded.model.to(device=device, dtype=dtype)
    signal = o.resolved_signal()
    make = explainer or functools.partial(_default_explainer, signal=o.signal)
    ex = make(model, o.method)
    ex_signal = getattr(ex, "signal", signal)
    if ex_signal != signal:
        raise BatchError(f"the explainer back-projects signal {ex_signal!r}, but the run's signal is "
                         f"{signal!r} (--signal); make them agree")

    def explain(images, target, cls):
        if isinstance(cls, list) and target is None:
            # The focus target must be one of the listed classes: the listed class with
            # the highest logit (the prediction, when it is listed).
            with torch.no_grad():
                logits = model(images)
            listed = torch.tensor(cls, device=logits.device)
            target = listed[logits[:, listed].argmax(1)]
        return ex(images, target, classes=cls)

    def autocast_ctx():
        if o.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_DTYPES[o.autocast])

    preprocess = resolve_preprocess(o.preprocess, loaded, source)
    items = _Items(source, preprocess)
    img_shape, map_shape, num_classes = _probe(items, explain, device, dtype, autocast_ctx, classes, n,
                                               model=model, classes_spec=o.classes)

    out = Path(o.out)
    identity = {"format": FORMAT, "model": loaded.fingerprint, "data": source.fingerprint,
                "images": n, "image_shape": list(img_shape), **o.identity()}
    status = None
    if dist.rank == 0:  # rank 0 locks OUT for the whole run; the other ranks write only once it holds it
        try:
            lock, resumed = _store.open_out(out, identity, o.overwrite, o.data)
            stack.callback(lock.release)
            _create_arrays(out, o, n, map_shape, num_classes, identity, img_shape)
            status = ("ok", resumed)
        except BatchError as e:
            status = ("error", str(e))
        except OSError as e:
            status = ("error", _store.write_error(out, e))
    status = dist.broadcast(status)
    if status[0] == "error":
        raise BatchError(status[1])
    resumed = status[1]

    import zarr

    group = zarr.open_group(str(out / "clear.zarr"), mode="r+")
    arrays = {name: group[name] for name in group.array_keys()}
    chunks = _chunk_ranges(n, o.batch_size)
    chunk_dir = out / "chunks"
    mine = [k for k in range(len(chunks)) if k % dist.world == dist.rank]
    # every committed chunk of this rank is checked against its commit record (sizes and
    # SHA-256 of its files); those that fail are redone and reported
    metas = {name: arr.metadata.to_dict() for name, arr in arrays.items()}
    checked = _store.check_chunks(out, metas, chunks, mine)
    todo = [k for k in mine if checked[k][0] != "ok"]
    redone = [{"chunk": k, "reason": why} for k, (state, why) in checked.items() if state == "bad"]
    for r in redone:
        logger.info("%s: chunk %d is redone: %s", out, r["chunk"], r["reason"])
    try:
        _store.drop_records(out, [r["chunk"] for r in redone])
    except OSError as e:
        raise BatchError(_store.write_error(out, e)) from e
    if resumed:
        logger.info("resuming %s (rank %d): %d of %d chunks already committed and verified", out, dist.rank,
                    len(mine) - len(todo), len(mine))

    loader = torch.utils.data.DataLoader(
        items, batch_sampler=[list(range(*chunks[k])) for k in todo], collate_fn=_Collate(img_shape),
        num_workers=o.workers, pin_memory=device.type == "cuda",
        persistent_workers=False)
    delay = float(os.environ.get(_DELAY_ENV, "0") or 0)
    render = None
    if "png" in o.store:
        from clear_native.render import render  # noqa: F811
        (out / "png").mkdir(exist_ok=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=sum(chunks[k][1] - chunks[k][0] for k in todo), unit="img", dynamic_ncols=True,
               disable=not o.progress or dist.rank != 0,
               desc=f"explain (rank 0/{dist.world})" if dist.active else "explain")
    writer_busy = [0.0]

    failed = []

    def commit(k, start, stop, blocks, record, prep_s):
        """Writes chunk k's arrays, flushes them and records their sizes and SHA-256, then
        its sealed commit record (write-then-rename). After a failure it writes nothing."""
        if failed:
            return
        t = time.perf_counter()
        try:
            for name, arr in arrays.items():
                arr[start:stop] = blocks[name]
            record["files"] = _store.commit_files(out, metas, k)
            if delay:
                time.sleep(delay)
            record["timings"]["write_s"] = prep_s + time.perf_counter() - t
            _write_json_atomic(chunk_dir / f"{k:06d}.json", _store.seal(record))
        except BaseException as e:
            failed.append(k)
            if isinstance(e, OSError):
                raise BatchError(_store.write_error(out, e)) from e
            raise
        writer_busy[0] += time.perf_counter() - t

    import collections
    from concurrent.futures import ThreadPoolExecutor

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clear-native-writer")
    stack.callback(writer.shutdown, wait=True, cancel_futures=True)  # before the lock goes, on any error
    pending = collections.deque()
    t_data = t_explain = t_write = 0.0
    images_run = errors_run = 0
    it = iter(loader)
    for k in todo:
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        start, stop = chunks[k]
        m = stop - start
        maps = None
        if batch["images"] is not None:
            images = batch["images"].to(device, dtype, non_blocking=True)
            with autocast_ctx():
                maps = explain(images, None, classes)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        rows = np.array(batch["good"], dtype=np.int64) - start
        blocks = {}
        for name, arr in arrays.items():
            fill = arr.fill_value
            blocks[name] = np.full((m, *arr.shape[1:]), fill, dtype=arr.dtype)
        blocks["label"][:] = batch["labels"]
        stats = [None] * m
        if maps is not None:
            blocks["valid"][rows] = True
            pred = maps.prediction.cpu().numpy()
            for name in arrays:
                if name in ("valid", "label", "input"):
                    continue
                v = getattr(maps, name)
                v = v.detach().float().cpu().numpy() if v.dtype.is_floating_point else v.cpu().numpy()
                blocks[name][rows] = v.astype(blocks[name].dtype, copy=False)
            if "input" in blocks:
                blocks["input"][rows] = input_pictures(batch["images"])
            dc = maps.dominant_class.cpu().numpy()
            dr = maps.dominant_response.detach().float().cpu().numpy()
            for r, s in zip(rows, _chunk_stats(dc, dr, pred, num_classes)):
                stats[r] = s
            finite = torch.isfinite(maps.logits.detach()).all(1).cpu().numpy()
            for r, i, ok in zip(rows, batch["good"], finite):
                if not ok:  # NaN / inf logits: no prediction; valid False, the reason in errors.json
                    for name, arr in arrays.items():
                        if name != "label":
                            blocks[name][r] = arr.fill_value
                    stats[r] = None
                    batch["errors"] = sorted(batch["errors"] + [
                        (i, "the model's logits for this image are not finite (NaN / infinite); not explained")])
            if render is not None:
                _write_pngs(out / "png", render, maps, batch["good"], num_classes)
        table = []
        for r in range(m):
            i = start + r
            err = next((e for j, e in batch["errors"] if j == i), None)
            table.append({"index": i, "key": source.keys[i], "label": int(batch["labels"][r]),
                          "prediction": int(blocks["prediction"][r]), "valid": err is None,
                          "error": err, **(stats[r] or {"prediction_share": None, "top_dominant": -1, "strong_share": None,
                                                        "prediction_share_strong": None,
                                                        "agrees": False, "dominant_classes": [],
                                                        "dominant_shares": []})})
        record = {"chunk": k, "start": start, "stop": stop, "rows": table,
                  "errors": [{"index": i, "key": source.keys[i], "reason": e} for i, e in batch["errors"]],
                  "timings": {"data_s": t1 - t0, "explain_s": t2 - t1}}
        # The writer thread stores the chunk while the next batch is explained; at most
        # two chunks wait, so memory stays bounded and errors surface promptly.
        while len(pending) >= 2:
            pending.popleft().result()
        pending.append(writer.submit(commit, k, start, stop, blocks, record, time.perf_counter() - t2))
        t4 = time.perf_counter()
        images_run += m
        t_data += t1 - t0
        t_explain += t2 - t1
        t_write += t4 - t2
        bar.update(m)
        errors_run += len(batch["errors"])
        bar.set_postfix(errors=errors_run, refresh=False)
    t5 = time.perf_counter()
    while pending:
        pending.popleft().result()
    writer.shutdown()
    t_write += time.perf_counter() - t5
    bar.close()
    del it, loader

    local = {"chunks_run": len(todo), "images_run": images_run, "data_s": t_data, "explain_s": t_explain, "write_s": t_write,
             "writer_busy_s": writer_busy[0], "redone": redone}
    gathered = dist.all_gather(local)
    summary = None
    if dist.rank == 0:
        try:
            summary = _finalize(out, o, loaded, source, identity, n, img_shape, map_shape, num_classes,
                                chunks, arrays, gathered, dist.world, t_start)
        except OSError as e:
            raise BatchError(_store.write_error(out, e)) from e
    summary = dist.broadcast(summary)
    return summary


def input_pictures(images: torch.Tensor) -> np.ndarray:
    """(n, ch, H, W) model inputs as uint8 pictures: x 255 for an image within [0, 1], else
    each channel stretched from its min to its max (a normalised input: mean / std)."""
    x = images.detach().float().cpu()
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    unit = ((lo >= 0) & (hi <= 1)).flatten(1).all(1).view(-1, 1, 1, 1)
    stretched = (x - lo) / (hi - lo).clamp_min(1e-12)
    return (torch.where(unit, x, stretched) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def _write_pngs(folder: Path, render, maps, indices, num_classes: int) -> None:
    from PIL import Image

    images = render(maps, num_classes=num_classes)
    images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if images.ndim == 4 and images.shape[1] in (3, 4) and images.shape[-1] not in (3, 4):
        images = images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    for i, img in zip(indices, images):
        path = folder / f"{i:07d}.png"
        tmp = folder / f".{i:07d}.png.tmp"
        try:
            Image.fromarray(img).save(tmp, format="PNG")
            os.replace(tmp, path)
        except OSError as e:
            raise BatchError(_store.write_error(folder.parent, e)) from e


def _versions() -> dict:
    import clear_native

    v = {"clear_native": clear_native.__version__, "torch": torch.__version__, "numpy": np.__version__,
         "python": platform.python_version()}
    for mod in ("zarr", "pyarrow", "PIL"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def _finalize(out, o, loaded, source, identity, n, img_shape, map_shape, num_classes, chunks, arrays,
              gathered, world, t_start) -> BatchSummary:
    chunk_dir = out / "chunks"
    rows, errors = [], []
    timings = {"data_s": 0.0, "explain_s": 0.0, "write_s": 0.0}
    for k in range(len(chunks)):
        rec = _read_json(chunk_dir / f"{k:06d}.json")
        if rec is None:
            raise RuntimeError(f"chunk {k} has no commit record after every rank finished")
        rows.extend(rec["rows"])
        errors.extend(rec["errors"])
        for key in timings:
            timings[key] += rec["timings"][key]
    for tmp in chunk_dir.glob(".*.tmp*"):  # left by a killed run
        tmp.unlink(missing_ok=True)
    this_run = {key: sum(g[key] for g in gathered) for key in timings}
    chunks_run = sum(g["chunks_run"] for g in gathered)
    redone = sorted((r for g in gathered for r in g.get("redone", [])), key=lambda r: r["chunk"])
    _write_table(out, rows, o.table)
    _write_json_atomic(out / "errors.json", errors)
    wall = time.perf_counter() - t_start
    inside = this_run["explain_s"]
    busy = sum(this_run.values())
    explained = sum(1 for r in rows if r["valid"])
    images_run = sum(g["images_run"] for g in gathered)
    manifest = {
        "format": FORMAT,
        "arguments": asdict(o) | {"store": list(o.store), "signal": o.resolved_signal()},
        "versions": _versions(),
        "model": {"spec": loaded.spec, "kind": loaded.kind, "class": type(loaded.model).__name__,
                  "fingerprint": loaded.fingerprint},
        "data": {"spec": source.spec, "kind": source.kind, "fingerprint": source.fingerprint,
                 "class_names": source.class_names, "labels": source.labels,
                 "fingerprint_of": source.fingerprint_of, "notes": source.notes},
        "shapes": {"image": list(img_shape), "maps": list(map_shape), "num_classes": num_classes},
        "arrays": {name: {"dtype": str(a.dtype), "shape": list(a.shape), "chunks": list(a.chunks)}
                   for name, a in arrays.items()},
        "counts": {"images": n, "explained": explained, "errors": len(errors), "chunks": len(chunks),
                   "chunks_this_invocation": chunks_run, "world_size": world,
                   "chunks_redone": redone},  # committed chunks that failed the resume's check
        "errors": errors,
        "timings": {
            "wall_s": wall,
            "data_s": this_run["data_s"], "explain_s": this_run["explain_s"], "write_s": this_run["write_s"],
            "outside_explain_share": (busy - inside) / busy if busy > 0 else None,
            "images_this_invocation": images_run,
            "images_per_s": images_run / wall if wall > 0 else None,
            "writer_busy_s": sum(g["writer_busy_s"] for g in gathered),
            "all_chunks": timings,
            "note": "this invocation, summed over ranks (all_chunks: over every chunk's commit record, "
                    "including earlier interrupted invocations); data_s = waiting for the DataLoader "
                    "(reading, decoding, collation), explain_s = model + back-projection + dominance, "
                    "write_s = time the loop spent on results (to numpy, per-image statistics) and "
                    "waiting for the writer thread, which stores Zarr chunks and commit records "
                    "while the next batch is explained (writer_busy_s: its own busy time)",
        },
        "identity": identity,
        "results": run_results(rows, num_classes, source.kind),
    }
    _write_json_atomic(out / "manifest.json", manifest)
    return BatchSummary(str(out), n, explained, errors, len(chunks), chunks_run, wall,
                        images_run / wall if wall > 0 else 0.0, manifest["timings"], redone,
                        manifest["results"])


def run_results(rows: list[dict], num_classes: int, data_kind: str | None = None) -> dict:
    """What the numbers of a run are (manifest ``results``): accuracy over the explained
    images that have a label, and how much the prediction dominates its own map."""
    valid = [r for r in rows if r["valid"]]
    labelled = [r for r in valid if r["label"] >= 0]
    correct = [r for r in labelled if r["label"] == r["prediction"]]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    out = {"explained": len(valid), "labelled": len(labelled), "correct": len(correct),
           "accuracy": len(correct) / len(labelled) if labelled else None,
           "prediction_share": mean(r["prediction_share"] for r in valid),
           "agrees": mean(float(r["agrees"]) for r in valid),
           "prediction_share_strong_correct": mean(r["prediction_share_strong"] for r in correct),
           "chance": 1.0 / num_classes if num_classes else None,
           "note": "accuracy: prediction == label over the explained images with a label (label >= 0), "
                   "on DATA's own mix of images; prediction_share: mean share of the pixels whose "
                   "dominant class is the prediction; agrees: share of the images whose most dominant "
                   "class is the prediction; prediction_share_strong_correct: the prediction's mean share "
                   "of the strong pixels of correctly classified images (chance: 1 / classes)"}
    if data_kind == "builtin":
        with contextlib.suppress(Exception):  # the shipped sample's record, when there is one
            from clear_native.demo import sample_info, sample_note

            out["sample"] = sample_info("mnist")
            note = sample_note({"sample": out["sample"]})
            out["sample_note"] = "the built-in " + note.replace("sample enriched", "sample is enriched", 1)
    return out


def _write_table(out: Path, rows: list[dict], fmt: str) -> None:
    cols = ["index", "key", "label", "prediction", "valid", "prediction_share", "top_dominant", "agrees",
            "strong_share", "prediction_share_strong", "dominant_classes", "dominant_shares", "error"]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"index": pa.int64(), "key": pa.string(), "label": pa.int64(), "prediction": pa.int32(),
                 "valid": pa.bool_(), "prediction_share": pa.float32(), "top_dominant": pa.int32(),
                 "agrees": pa.bool_(), "strong_share": pa.float32(), "prediction_share_strong": pa.float32(),
                 "dominant_classes": pa.list_(pa.int32()),
                 "dominant_shares": pa.list_(pa.float32()), "error": pa.string()}
        table = pa.table({c: pa.array([r[c] for r in rows], type=types[c]) for c in cols})
        tmp = out / ".table.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, out / "table.parquet")
    else:
        import csv

        tmp = out / ".table.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in rows:
                w.writerow([json.dumps(r[c]) if isinstance(r[c], list) else ("" if r[c] is None else r[c])
                            for c in cols])
        os.replace(tmp, out / "table.csv")


# -- command line -------------------------------------------------------------------------

class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, keeping the line breaks written in an option's help."""

    def _split_lines(self, text, width):
        split = super()._split_lines
        return [line for part in text.splitlines() for line in split(part, width)]


def add_arguments(p) -> None:
    """The ``explain`` subcommand's options."""
    if p.formatter_class is argparse.HelpFormatter:
        p.formatter_class = _HelpFormatter
    p.add_argument("--model", help="package.module:factory (returns a module or (module, preprocess)), "
                   "torchvision.models:NAME or timm:NAME (built without pretrained weights: nothing is "
                   "downloaded; give them with --weights), a TorchScript file or a torch.export .pt2 file; "
                   "default: the built-in MNIST model.\n"
                   "Inputs that run code: a package.module:factory (--model) or package.module:function "
                   "(--data) always; a .pt2 file too (torch.export.load can run code stored in it), so "
                   "it needs --trust-model-code; a TorchScript file runs its own TorchScript program "
                   "(no Python, but any registered operator, file reads included): use files you trust")
    p.add_argument("--data", help="a folder of images, an .npz/.npy array, or package.module:function "
                   "returning a data set; default: the built-in MNIST sample.\n"
                   "A folder's class sub-folders give the labels: their names where every name is an "
                   "integer (9/ is label 9), else the index of the name in the sorted names (listed in "
                   "the manifest). A folder's fingerprint (resume check) uses file metadata (path, size, "
                   "modification time), not contents, unless --hash-data")
    p.add_argument("--weights", metavar="FILE",
                   help="a state_dict file (torch.save(model.state_dict(), FILE)) loaded into the model with "
                        "torch.load(weights_only=True): tensors only, no code; a checkpoint dict holding it "
                        "under 'state_dict' / 'model' / 'model_state_dict' is unwrapped")
    p.add_argument("--preprocess", metavar="SPEC",
                   help="what each image goes through before the model:\n"
                        "imagenet: resize the shorter side to 256, centre crop 224, scale to [0, 1], "
                        "normalise with the ImageNet mean / std (torchvision's ImageNet evaluation transform)\n"
                        "package.module:callable: called with each image and returning a (ch, H, W) tensor "
                        "or array; it receives an image file as a PIL image (torchvision's convention: a "
                        "torchvision transform works as it is), an .npz / .npy item as a numpy array, a "
                        "data set function's item as the data set returns it (array, tensor or PIL image)\n"
                        "none: no preprocess, even where the model factory or the data set has one\n"
                        "default: the model factory's preprocess, else the data set's own, else none: "
                        "integer images scaled to [0, 1] (uint8 / 255). Images of mixed sizes work once the "
                        "preprocess gives them one size; the others are skipped, each with its reason")
    p.add_argument("--trust-model-code", action="store_true",
                   help="load a torch.export .pt2 --model, which can run code stored in the file "
                        "(refused without this flag)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"image files larger than this (width x height, read from the file's header, "
                        f"before decoding) are skipped as errors (default {MAX_PIXELS} = 8192 x 8192); "
                        f"0: no limit but Pillow's own (twice PIL.Image.MAX_IMAGE_PIXELS)")
    p.add_argument("--hash-data", action="store_true",
                   help="fingerprint an image folder by its files' contents (reads every file once "
                        "more) instead of their metadata")
    p.add_argument("--out", required=True, help="output folder (created; resumed when it holds the same run)")
    p.add_argument("--method", default="deconvnet", choices=("deconvnet", "guided", "gradient", "cam"))
    from clear_native.explain import SIGNALS

    p.add_argument("--signal", default=None, choices=SIGNALS,
                   help="what deconvnet / guided / gradient send down for each class (not with --method cam):\n"
                        "response (default): the class map's rectified response at the last feature layer (paper)\n"
                        "logit: the gradient of the class logit (earlier releases; as Captum's attributions)")
    p.add_argument("--classes", default="all", help="'all', 'top-K' or a comma-separated list of class ids")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch and per Zarr chunk (64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES), help="model and input dtype")
    p.add_argument("--autocast", default=None, choices=("bfloat16", "float16"),
                   help="run the model under torch.autocast in this dtype")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0)")
    p.add_argument("--store", default="dominant,response",
                   help=f"comma-separated maps to store: {', '.join(STORE_CHOICES)} (dominant,response); "
                        "focus gives the report's positive / negative focus and binary views, input the "
                        "model's input (uint8) that the report shows the maps over")
    p.add_argument("--response-dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--table", default="parquet", choices=("parquet", "csv"), help="per-image table format")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh, deleting what a run wrote under OUT (refused when OUT holds "
                        "anything but a clear-native run)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def options_from_args(args) -> BatchOptions:
    store = tuple(s.strip() for s in args.store.split(",") if s.strip())
    return BatchOptions(out=args.out, model=args.model, data=args.data, method=args.method,
                        signal=args.signal, classes=args.classes, batch_size=args.batch_size, device=args.device,
                        dtype=args.dtype, autocast=args.autocast, workers=args.workers, store=store,
                        response_dtype=args.response_dtype, table=args.table, overwrite=args.overwrite,
                        progress=args.progress, trust_model_code=getattr(args, "trust_model_code", False),
                        max_pixels=getattr(args, "max_pixels", MAX_PIXELS),
                        hash_data=getattr(args, "hash_data", False),
                        preprocess=getattr(args, "preprocess", None), weights=getattr(args, "weights", None))


def summary_lines(results: dict) -> list[str]:
    """The run's numbers in words (from manifest ``results``, see :func:`run_results`)."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = []
    if results.get("labelled"):
        lines.append(f"accuracy {pct(results['accuracy'])} ({results['correct']} of the {results['labelled']} "
                     "explained images with a label: prediction == label, on DATA as given)")
    elif "labelled" in results:
        lines.append("accuracy: n/a (no explained image has a label)")
    if results.get("sample_note"):
        lines.append(f"note: {results['sample_note']}")
    if results.get("prediction_share") is not None:
        lines.append(f"the prediction dominates {pct(results['prediction_share'])} of an image's pixels on "
                     f"average; it is the most dominant class in {pct(results['agrees'])} of the images")
    if results.get("prediction_share_strong_correct") is not None:
        lines.append(f"class sensitivity: the prediction's share of the strong pixels of correctly classified "
                     f"images {pct(results['prediction_share_strong_correct'])} (chance "
                     f"{pct(results['chance'])})")
    return lines


def main(args) -> int:
    """Runs the ``explain`` subcommand; returns the exit status (0, 2 bad arguments, 3 skipped images)."""
    try:
        summary = run(options_from_args(args))
    except BatchError as e:
        print(f"clear-native explain: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if int(os.environ.get("RANK", "0")) == 0:
        t = summary.timings
        share = t.get("outside_explain_share")
        print(f"clear-native explain: {summary.images} images ({summary.explained} explained, "
              f"{len(summary.errors)} errors) in {summary.wall_s:.2f} s, "
              f"{summary.images_per_s:.1f} images/s; chunks {summary.chunks_run} of {summary.chunks} run now",
              file=sys.stderr)
        for line in summary_lines(summary.results):
            print(f"  {line}", file=sys.stderr)
        print(f"  time (this invocation, {t.get('images_this_invocation', 0)} images): reading data "
              f"{t['data_s']:.2f} s, explaining {t['explain_s']:.2f} s, writing {t['write_s']:.2f} s"
              + (f" ({share:.0%} outside explaining)" if share is not None else ""), file=sys.stderr)
        print(f"  results in {summary.out} (table, maps, manifest.json); a results page: "
              f"clear-native report {summary.out}", file=sys.stderr)
        for r in summary.redone:
            print(f"  redid chunk {r['chunk']}: {r['reason']}", file=sys.stderr)
        for e in summary.errors[:10]:
            print(f"  skipped {e['key']}: {e['reason']}", file=sys.stderr)
        if len(summary.errors) > 10:
            print(f"  ... and {len(summary.errors) - 10} more (see {summary.out}/errors.json)", file=sys.stderr)
    return summary.exit_code
