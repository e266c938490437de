"""The ``clear-native`` command line."""
from __future__ import annotations

import argparse
import sys

from clear_native import rules
from clear_native.explain import DEFAULT_METHOD, SIGNALS, methods


def _demo(args: argparse.Namespace) -> int:
    """The built-in demo: paper figures of the shipped MNIST model into ./clear-demo/."""
    from clear_native.demo import run_demo, sample_note

    if args.signal is not None and args.method == "cam":
        print("clear-native demo: error: --signal applies to the back-projection methods "
              f"({', '.join(rules.names())}), not to --method cam", file=sys.stderr)
        return 2
    kw = {} if args.signal is None else {"signal": args.signal}
    summary = run_demo(args.out, method=args.method, dataset=args.dataset, device=args.device, **kw)
    how = summary["method"] if "method" in summary else args.method
    if summary.get("signal"):
        how += f", {summary['signal']} signal"
    print(f"clear-native demo ({how}): {summary['images']} {summary['dataset']} images, accuracy "
          f"{100 * summary['accuracy']:.2f}%, {summary['num_wrong']} misclassified, "
          f"{summary['seconds']} s")
    if "sample" in summary:
        print(f"  ({sample_note(summary)})")
    c = summary.get("class_sensitivity")
    if c:
        def pct(v):
            return "n/a" if v is None or v != v else f"{100 * v:.1f}%"

        causal = "n/a" if c["causal_effect"] != c["causal_effect"] else f"{c['causal_effect']:+.3f}"
        print(f"  class sensitivity: predicted share of strong pixels (correct images) "
              f"{pct(c['share_predicted_correct'])} vs chance {pct(c['chance'])}, head-randomised "
              f"agreement {pct(c['head_randomised_agreement'])}, causal effect {causal}")
    print(f"wrote {summary['out']}/index.html (figures: "
          f"{', '.join(summary['files'].values())}; numbers: metrics.json)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Quantitative evaluation (paper Table 1, deletion/insertion, dominance, sanity)."""
    from clear_native.evaluate import evaluate

    report = evaluate(args.dataset, args.split, methods=args.methods, signals=args.signals,
                      limit=args.limit, sanity_images=args.sanity_images, device=args.device, out=args.out)
    print((__import__("pathlib").Path(args.out) / "evaluation.md").read_text())
    print(f"wrote {args.out}/evaluation.json and evaluation.md ({report['seconds']} s)")
    return 0


def _positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _names(kind: str):
    """argparse ``type=``: a comma-separated list of evaluate's method or signal names."""
    def parse(text: str) -> tuple[str, ...]:
        from clear_native.evaluate import parse_names

        try:
            return parse_names(text, methods() if kind == "method" else SIGNALS, kind)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = f"{kind} list"
    return parse


def _explain(args: argparse.Namespace) -> int:
    """Batch explanation of a data set (see :mod:`clear_native.batch`)."""
    from clear_native import batch

    return batch.main(args)


def _verify(args: argparse.Namespace) -> int:
    """Check a batch run's store (see :mod:`clear_native.store`)."""
    from clear_native import store

    return store.main(args)


def _report(args: argparse.Namespace) -> int:
    """A static results page over a batch run (see :mod:`clear_native.report`)."""
    from clear_native import report

    return report.main(args)


def _train(args: argparse.Namespace) -> int:
    """Train a built-in model, write weights, checksum and log to --out."""
    import logging

    from clear_native.train import run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result, paths = run_training(
        args.dataset, args.out, epochs=args.epochs, seed=args.seed, subset=args.subset,
        batch_size=args.batch_size, lr=args.lr, threads=args.threads,
        batch_norm=not args.no_batch_norm)
    log = result.log
    print(f"{log['model']}: {log['parameters']} parameters, {log['train_size']} training images, "
          f"{log['epochs']} epochs in {log['train_seconds']:.0f} s, "
          f"test accuracy {100 * log['test_accuracy']:.2f}% on {log['test_size']} images")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    """Build the shipped test-split sample with the shipped model."""
    from clear_native.train import save_sample

    paths = save_sample(args.dataset, args.out, first=args.first, max_errors=args.max_errors)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="the paper's figures for the built-in MNIST model (default)")
    demo.add_argument("--out", default="clear-demo", help="output folder (default ./clear-demo)")
    demo.add_argument("--method", default=DEFAULT_METHOD, choices=methods())
    demo.add_argument("--signal", default=None, choices=SIGNALS,
                      help="back-projection signal (default: the method's default, response; "
                           "not for cam)")
    demo.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(func=_demo)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="quantitative evaluation of the built-in model's CLEAR maps")
    ev.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ev.add_argument("--split", default="sample", choices=["sample", "test"],
                    help="the shipped sample (default) or the full test set (needs the data package)")
    ev.add_argument("--methods", default=",".join(methods()), type=_names("method"),
                    help=f"comma-separated methods (default: {','.join(methods())})")
    ev.add_argument("--signals", default="response,logit", type=_names("signal"),
                    help="comma-separated back-projection signals, each back-projection method is "
                         "evaluated once per signal; cam has none and runs once (default: response,logit)")
    ev.add_argument("--sanity-images", type=int, default=32,
                    help="images for the sanity check and the head randomisation (default 32)")
    ev.add_argument("--limit", type=_positive_int, default=None, help="use the first N images only (N >= 1)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--out", default="clear-eval")
    ev.set_defaults(func=_evaluate)


def _add_explain(sub) -> None:
    explain = sub.add_parser(
        "explain", help="explain every image of a data set; results to Zarr + Parquet, resumable",
        description="Explain every image of DATA with CLEAR and write the maps (Zarr), a per-image "
                    "table, errors and a manifest under OUT. Re-running the same command resumes. "
                    "Exit status: 0 done, 2 bad arguments, 3 done but some images were skipped.")
    from clear_native.batch import add_arguments

    add_arguments(explain)
    explain.set_defaults(func=_explain)


def _add_verify(sub) -> None:
    verify = sub.add_parser(
        "verify", help="check a batch run's output folder: every chunk against its commit record",
        description="Check OUT of `clear-native explain`: every chunk file against the size and SHA-256 "
                    "in its commit record, the records, the table and errors.json against the chunks, "
                    "the run and array records. Prints what is wrong and which chunks to redo. "
                    "--repair restores run.json / arrays.json / array metadata from their copies, "
                    "rewrites the table and errors.json from the commit records, and deletes the "
                    "commit records of bad chunks, so that rerunning the same explain command (printed) "
                    "redoes exactly those. Exit status: 0 complete and sound, 1 something to redo or "
                    "fix, 2 not a run / in use by a run / cannot write.")
    verify.add_argument("out", metavar="OUT", help="the --out folder of a clear-native explain run")
    verify.add_argument("--repair", action="store_true",
                        help="fix what can be fixed and mark the bad chunks for redoing")
    verify.set_defaults(func=_verify)


def _add_report(sub) -> None:
    report = sub.add_parser(
        "report", help="a static results page (OUT/report/index.html) over a finished explain run",
        description="Write OUT/report/: index.html (open it from disk, no server), data/index.js and the "
                    "pictures. The page: the run's summary (accuracy, class sensitivity, throughput, errors, "
                    "per class), a paged grid of CLEAR overlays with filters (misclassified, by class, by how "
                    "much the prediction dominates) and sorted views, and a view per image (input, positive / "
                    "negative focus, CLEAR map, binary map, class legend). A rerun draws only missing pictures. "
                    "Exit status: 0 written, 2 not a finished run / bad arguments / cannot write.")
    from clear_native.report import add_arguments as report_arguments

    report_arguments(report)
    report.set_defaults(func=_report)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train a built-in model (mnist, fashion-mnist)")
    train.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--subset", type=int, default=None,
                       help="train on the first N training images (and test on the first N)")
    train.add_argument("--out", default=".", help="output directory (default: current)")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle Adam)")
    train.add_argument("--threads", type=int, default=None,
                       help="torch threads during training (bit-identical results need equal counts)")
    train.add_argument("--no-batch-norm", action="store_true",
                       help="train the plain network (default: train with BatchNorm, then fold it)")
    train.set_defaults(func=_train)


def _add_sample(sub) -> None:
    sample = sub.add_parser("sample", help="build the shipped test sample of a built-in model")
    sample.add_argument("dataset", choices=["mnist", "fashion-mnist"])
    sample.add_argument("--out", default=".", help="output directory (default: current)")
    sample.add_argument("--first", type=int, default=500)
    sample.add_argument("--max-errors", type=int, default=100)
    sample.set_defaults(func=_sample)


def build_parser() -> argparse.ArgumentParser:
    """The ``clear-native`` parser: one subcommand per ``_add_<name>``, in help order."""
    parser = argparse.ArgumentParser(prog="clear-native", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    for add in (_add_demo, _add_evaluate, _add_explain, _add_verify, _add_report, _add_train, _add_sample):
        add(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; without a subcommand, the demo with its defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        args = parser.parse_args(["demo"])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
