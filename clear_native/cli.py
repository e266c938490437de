"""The ``clear-native`` command line."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    """Small built-in example: dominance of synthetic per-class maps."""
    import torch

    import clear_native
    from clear_native import reference

    torch.manual_seed(0)
    x = torch.randn(4, 10, 64, 64)
    d = clear_native.dominance(x, torch.tensor([0, 3, 5, 9]))
    r = reference.dominance(x, torch.tensor([0, 3, 5, 9]))
    same = torch.equal(d.dominant_class, r.dominant_class)
    shares = torch.bincount(d.dominant_class.flatten(), minlength=10) / d.dominant_class.numel()
    print(f"clear_native {clear_native.__version__} {clear_native.build_info()}")
    print(f"dominant class shares over 4x64x64 pixels, 10 classes: "
          f"{', '.join(f'{c}:{s:.2f}' for c, s in enumerate(shares.tolist()))}")
    print(f"native == reference: {same}")
    return 0 if same else 1


def _explain(args: argparse.Namespace) -> int:
    """Batch explanation of a data set (see :mod:`clear_native.batch`)."""
    from clear_native import batch

    return batch.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clear-native", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the built-in example")
    demo.set_defaults(func=_demo)
    explain = sub.add_parser(
        "explain", help="explain every image of a data set; results to Zarr + Parquet, resumable",
        description="Explain every image of DATA with CLEAR and write the maps (Zarr), a per-image "
                    "table, errors and a manifest under OUT. Re-running the same command resumes. "
                    "Exit status: 0 done, 2 bad arguments, 3 done but some images were skipped.")
    from clear_native.batch import add_arguments

    add_arguments(explain)
    explain.set_defaults(func=_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        args = parser.parse_args(["demo"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
