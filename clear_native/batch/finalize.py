"""The end of a run (rank 0, once every rank is done): the table and errors.json from the
commit records, then manifest.json with the run's numbers (:func:`run_results`, in words:
:func:`summary_lines`)."""
from __future__ import annotations

import contextlib
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

import clear_native
from clear_native.batch.explainer import Explainer
from clear_native.batch.options import FORMAT, BatchOptions, BatchSummary
from clear_native.batch.runstore import RunStore

_TIMINGS_NOTE = ("this invocation, summed over ranks (all_chunks: over every chunk's commit record, "
                 "including earlier interrupted invocations); data_s = waiting for the DataLoader "
                 "(reading, decoding, collation), explain_s = model + back-projection + dominance, "
                 "write_s = time the loop spent on results (to numpy, per-image statistics) and "
                 "waiting for the writer thread, which stores Zarr chunks and commit records "
                 "while the next batch is explained (writer_busy_s: its own busy time)")


@dataclass
class Shapes:
    """What the probe found: the run's image shape (ch, H, W), map shape (H, W) and C."""

    image: tuple
    maps: tuple
    num_classes: int


def _versions() -> dict:
    v = {"clear_native": clear_native.__version__, "torch": torch.__version__, "numpy": np.__version__,
         "python": platform.python_version()}
    for mod in ("zarr", "pyarrow", "PIL"):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def _timings(this_run: dict, gathered: list[dict], all_chunks: dict, wall: float) -> dict:
    """manifest ``timings``: this invocation's (summed over ranks) and every chunk's."""
    inside = this_run["explain_s"]
    busy = sum(this_run.values())
    images_run = sum(g["images_run"] for g in gathered)
    return {
        "wall_s": wall,
        "data_s": this_run["data_s"], "explain_s": this_run["explain_s"], "write_s": this_run["write_s"],
        "outside_explain_share": (busy - inside) / busy if busy > 0 else None,
        "images_this_invocation": images_run,
        "images_per_s": images_run / wall if wall > 0 else None,
        "writer_busy_s": sum(g["writer_busy_s"] for g in gathered),
        "all_chunks": all_chunks,
        "note": _TIMINGS_NOTE,
    }


def finalize(rs: RunStore, o: BatchOptions, ex: Explainer, identity: dict, shapes: Shapes,
             chunks: list[tuple[int, int]], gathered: list[dict], world: int, t_start: float) -> BatchSummary:
    """Writes the table, errors.json and (last) manifest.json; returns the run's summary.
    ``gathered``: each rank's counts and timings of this invocation."""
    rows, errors, all_chunks = rs.records(len(chunks))
    this_run = {key: sum(g[key] for g in gathered) for key in all_chunks}
    chunks_run = sum(g["chunks_run"] for g in gathered)
    redone = sorted((r for g in gathered for r in g.get("redone", [])), key=lambda r: r["chunk"])
    rs.write_table(rows, errors, o.table)
    wall = time.perf_counter() - t_start
    explained = sum(1 for r in rows if r["valid"])
    loaded, source = ex.loaded, ex.source
    manifest = {
        "format": FORMAT,
        "arguments": o.arguments(),
        "versions": _versions(),
        "model": {"spec": loaded.spec, "kind": loaded.kind, "class": type(loaded.model).__name__,
                  "fingerprint": loaded.fingerprint},
        "data": {"spec": source.spec, "kind": source.kind, "fingerprint": source.fingerprint,
                 "class_names": source.class_names, "labels": source.labels,
                 "fingerprint_of": source.fingerprint_of, "notes": source.notes},
        "shapes": {"image": list(shapes.image), "maps": list(shapes.maps), "num_classes": shapes.num_classes},
        "arrays": {name: {"dtype": str(a.dtype), "shape": list(a.shape), "chunks": list(a.chunks)}
                   for name, a in rs.arrays.items()},
        "counts": {"images": len(source), "explained": explained, "errors": len(errors), "chunks": len(chunks),
                   "chunks_this_invocation": chunks_run, "world_size": world,
                   "chunks_redone": redone},  # committed chunks that failed the resume's check
        "errors": errors,
        "timings": _timings(this_run, gathered, all_chunks, wall),
        "identity": identity,
        "results": run_results(rows, shapes.num_classes, source.kind),
    }
    rs.write_manifest(manifest)
    t = manifest["timings"]
    return BatchSummary(str(rs.out), len(source), explained, errors, len(chunks), chunks_run, wall,
                        t["images_this_invocation"] / wall if wall > 0 else 0.0, t, redone,
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
