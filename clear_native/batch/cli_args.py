"""The ``explain`` subcommand: its options (:func:`add_arguments`), their
:class:`BatchOptions` and :func:`main`, which runs it and says what was done."""
from __future__ import annotations

import argparse
import os
import sys

from clear_native.batch.finalize import summary_lines
from clear_native.batch.loop import run
from clear_native.batch.options import DTYPES, EXIT_USAGE, STORE_CHOICES, BatchOptions
from clear_native.explain import DEFAULT_METHOD, SIGNALS, methods
from clear_native.io import MAX_PIXELS, BatchError
from clear_native.store import Files


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
    p.add_argument("--method", default=DEFAULT_METHOD, choices=methods(),
                   help=f"how the class maps are made (default {DEFAULT_METHOD}: layer-wise relevance of the class "
                        "logit, the method that passes the sanity checks on the models measured; deconvnet is the "
                        "paper's)")
    p.add_argument("--signal", default=None, choices=SIGNALS,
                   help="what the back-projection methods send down for each class (not with --method cam):\n"
                        "response: the class map's rectified response at the last feature layer (paper; "
                        "default of deconvnet / guided / gradient)\n"
                        "logit: the class logit (default of lrp; gradient methods: as Captum's attributions)")
    p.add_argument("--classes", default="all", help="'all', 'top-K' or a comma-separated list of class ids")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch and per Zarr chunk (64)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cpu)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model and input dtype")
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
    """The :class:`BatchOptions` of parsed ``explain`` arguments."""
    store = tuple(s.strip() for s in args.store.split(",") if s.strip())
    return BatchOptions(out=args.out, model=args.model, data=args.data, method=args.method,
                        signal=args.signal, classes=args.classes, batch_size=args.batch_size, device=args.device,
                        dtype=args.dtype, autocast=args.autocast, workers=args.workers, store=store,
                        response_dtype=args.response_dtype, table=args.table, overwrite=args.overwrite,
                        progress=args.progress, trust_model_code=getattr(args, "trust_model_code", False),
                        max_pixels=getattr(args, "max_pixels", MAX_PIXELS),
                        hash_data=getattr(args, "hash_data", False),
                        preprocess=getattr(args, "preprocess", None), weights=getattr(args, "weights", None))


def main(args, *, files: Files | None = None) -> int:
    """Runs the ``explain`` subcommand; returns the exit status (0, 2 bad arguments, 3 skipped
    images). ``files``: how the run writes under OUT (see :func:`run`)."""
    try:
        options = options_from_args(args)
        summary = run(options, files=files)
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
        signal = options.resolved_signal()
        print(f"  method {options.method}" + (f" ({signal} signal)" if signal else "")
              + (" (the default)" if options.method == DEFAULT_METHOD else ""), file=sys.stderr)
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
