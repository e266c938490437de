"""The ``clear-native`` command line."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    """The built-in demo: paper figures of the shipped MNIST model into ./clear-demo/."""
    from clear_native.demo import run_demo

    summary = run_demo(args.out, method=args.method, dataset=args.dataset, device=args.device)
    print(f"clear-native demo: {summary['images']} {summary['dataset']} images, accuracy "
          f"{100 * summary['accuracy']:.2f}%, {summary['num_wrong']} misclassified, "
          f"{summary['seconds']} s")
    print(f"wrote {summary['out']}/index.html (figures: "
          f"{', '.join(summary['files'].values())}; numbers: metrics.json)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Quantitative evaluation (paper Table 1, deletion/insertion, dominance, sanity)."""
    from clear_native.evaluate import evaluate

    report = evaluate(args.dataset, args.split, methods=args.methods.split(","), limit=args.limit,
                      device=args.device, out=args.out)
    print((__import__("pathlib").Path(args.out) / "evaluation.md").read_text())
    print(f"wrote {args.out}/evaluation.json and evaluation.md ({report['seconds']} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clear-native", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="the paper's figures for the built-in MNIST model (default)")
    demo.add_argument("--out", default="clear-demo", help="output folder (default ./clear-demo)")
    demo.add_argument("--method", default="deconvnet",
                      choices=["deconvnet", "guided", "gradient", "cam"])
    demo.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(func=_demo)
    ev = sub.add_parser("evaluate", help="quantitative evaluation of the built-in model's CLEAR maps")
    ev.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ev.add_argument("--split", default="sample", choices=["sample", "test"],
                    help="the shipped sample (default) or the full test set (needs the data package)")
    ev.add_argument("--methods", default="deconvnet,guided,gradient,cam")
    ev.add_argument("--limit", type=int, default=None, help="use the first N images only")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default="clear-eval")
    ev.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        args = parser.parse_args(["demo"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
