"""A batch run's options (:class:`BatchOptions`, checked by :func:`check_options`), its
summary (:class:`BatchSummary`) and the small rules they rely on."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from clear_native.explain import DEFAULT_METHOD, DEFAULT_SIGNAL, SIGNALS
from clear_native.io import MAX_PIXELS, PREPROCESS_CHOICES, BatchError
from clear_native.store import STORE_FIELDS

FORMAT = "clear-native-batch/1"
EXIT_OK, EXIT_USAGE, EXIT_ERRORS = 0, 2, 3
STORE_CHOICES = ("dominant", "response", "runner_up", "focus", "weakest", "input", "png")
STRONG = 0.1  # "strong" pixels of the table: dominant response >= STRONG x the image's largest
SHAPE_SAMPLE = 16  # the run's image shape: the most common among this many first readable images
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


@dataclass
class BatchOptions:
    """Arguments of a batch run (the command line's options)."""

    out: str
    model: str | None = None
    data: str | None = None
    method: str = DEFAULT_METHOD
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

    def arguments(self) -> dict:
        """The options as the manifest and arrays.json record them (``signal`` resolved)."""
        return asdict(self) | {"store": list(self.store), "signal": self.resolved_signal()}

    def array_specs(self, n: int, map_shape, num_classes: int, img_shape) -> dict:
        """The run's arrays: name -> (shape, dtype, fill value) (see :mod:`clear_native.batch`)."""
        cdt = class_dtype(num_classes)
        rdt = np.dtype(self.response_dtype)
        specs = {"prediction": ((n,), cdt, -1), "target": ((n,), cdt, -1), "label": ((n,), np.int64, -1),
                 "logits": ((n, num_classes), np.float32, np.nan), "valid": ((n,), np.bool_, False)}
        for item in self.store:
            for name, kind in STORE_FIELDS.get(item, ()):
                specs[name] = ((n, *map_shape), cdt if kind == "class" else rdt, -1 if kind == "class" else np.nan)
        if "input" in self.store:
            specs["input"] = ((n, *img_shape), np.uint8, 0)
        return specs


@dataclass
class BatchSummary:
    """What a run did (:func:`clear_native.batch.run`'s result)."""

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


def check_options(o: BatchOptions) -> None:
    """Refuses bad options (:class:`BatchError`, exit status 2) before anything is loaded."""
    if o.batch_size < 1:
        raise BatchError(f"--batch-size must be >= 1, got {o.batch_size}")
    if o.workers < 0:
        raise BatchError(f"--workers must be >= 0, got {o.workers}")
    if o.max_pixels is not None and o.max_pixels < 0:
        raise BatchError(f"--max-pixels must be >= 0 (0: no limit), got {o.max_pixels}")
    if o.dtype not in DTYPES:
        raise BatchError(f"--dtype must be one of {sorted(DTYPES)}, got {o.dtype!r}")
    if o.autocast not in (None, "bfloat16", "float16"):
        raise BatchError(f"--autocast must be bfloat16 or float16, got {o.autocast!r}")
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
    if o.table == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise BatchError("--table parquet needs pyarrow (pip install pyarrow); or use --table csv") from e
    try:
        import zarr  # noqa: F401
    except ImportError as e:
        raise BatchError("batch explanation writes Zarr arrays: pip install 'zarr>=3'") from e
