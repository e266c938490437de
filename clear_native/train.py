"""Training of the built-in models (``clear-native train mnist|fashion-mnist``).

Reproducible from a seed: the seed fixes the initialisation (``torch.manual_seed``) and the
order of the mini-batches (a ``torch.Generator`` of its own); training runs with
``torch.use_deterministic_algorithms(True)`` (restored afterwards). Two runs with the same
seed, data, options and thread count give identical weights on the same machine and torch
build. Optimiser: Adam with a one-cycle learning-rate schedule, cross-entropy loss, no
augmentation, no weight decay; the weights kept are those after the last epoch (the test
split is evaluated after each epoch for the log only, never used for selection).

Outputs in ``out``: ``<stem>.pt`` (state dict), ``<stem>.sha256`` (``sha256sum`` format),
``<stem>.json`` (training log).
"""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from clear_native.data import ImageSet, load_dataset, to_tensor
from clear_native.models import MODELS, AllCNN, ModelSpec, _spec, build_model, fold_batchnorm, sha256_file

__all__ = ["TrainResult", "train_model", "evaluate", "save_result", "run_training"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A trained model and its training log (JSON-serialisable dict)."""

    model: AllCNN
    log: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _deterministic(threads: int | None) -> Iterator[None]:
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (preprocessed with :func:`to_tensor`)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        x = to_tensor(data.images[i:i + batch_size])
        y = torch.from_numpy(data.labels[i:i + batch_size])
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


def train_model(
    name: str,
    train: ImageSet,
    test: ImageSet | None = None,
    *,
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 3e-3,
    threads: int | None = None,
    batch_norm: bool = True,
    progress: bool = False,
) -> TrainResult:
    """Train the built-in architecture for model ``name`` on ``train``.

    Args:
        name: built-in model name (decides the number of classes).
        train: training images, uint8 (N, 28, 28), labels int64 (N,).
        test: evaluated after every epoch for the log (not used for training), or None.
        epochs, batch_size: schedule; the last batch of an epoch may be smaller.
        seed: initialisation and data order.
        lr: peak learning rate of the one-cycle schedule (Adam).
        threads: ``torch.set_num_threads`` during training (restored afterwards);
            None keeps the current setting. Results are only bit-identical at equal
            thread counts.
        batch_norm: train with BatchNorm after each feature convolution, then fold it into
            the convolutions (:func:`~clear_native.models.fold_batchnorm`); the returned
            model is always the plain conv / ReLU / max-pool network.
    """
    spec = _check_training(name, train, epochs, batch_size)
    x_all, y_all = to_tensor(train.images), torch.from_numpy(train.labels)
    n = len(train)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    epochs_log: list[dict[str, float]] = []
    t_start = time.perf_counter()
    with _deterministic(threads):
        used_threads = torch.get_num_threads()
        torch.manual_seed(seed)
        model = build_model(spec.name, batch_norm=batch_norm)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
        model.train()
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            bar = tqdm(range(steps_per_epoch), desc=f"{spec.name} epoch {epoch}/{epochs}",
                       disable=not progress, mininterval=10.0)
            loss_sum, correct = _train_epoch(model, opt, sched, x_all, y_all, perm, batch_size, bar)
            entry = {
                "epoch": epoch,
                "loss": loss_sum / n,
                "train_accuracy": correct / n,
                "seconds": time.perf_counter() - t0,
            }
            if test is not None:
                entry["test_accuracy"] = evaluate(model, test)
            log.info("epoch %d: %s", epoch, entry)
            epochs_log.append(entry)
    model.eval()
    train_seconds = time.perf_counter() - t_start
    model = fold_batchnorm(model)
    info = _training_log(spec, model, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr,
                         threads=used_threads, batch_norm=batch_norm, train_size=n,
                         test_size=len(test) if test is not None else 0, epochs_log=epochs_log,
                         train_seconds=train_seconds)
    return TrainResult(model, info)


def _check_training(name: str, train: ImageSet, epochs: int, batch_size: int) -> ModelSpec:
    """The built-in model's spec for ``name``, after checking the schedule and that the
    training labels are classes of that model (ValueError otherwise)."""
    if epochs < 1 or batch_size < 1 or len(train) == 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1 and a non-empty training set, got "
            f"epochs={epochs}, batch_size={batch_size}, {len(train)} images")
    spec = _spec(name)
    if int(train.labels.max()) >= spec.num_classes or int(train.labels.min()) < 0:
        raise ValueError(f"labels must lie in [0, {spec.num_classes}), got "
                         f"[{train.labels.min()}, {train.labels.max()}]")
    return spec


def _train_epoch(model: nn.Module, opt, sched, x_all: torch.Tensor, y_all: torch.Tensor,
                 perm: torch.Tensor, batch_size: int, steps: Iterable[int]) -> tuple[float, int]:
    """One epoch: a step of ``opt`` and ``sched`` per mini-batch of ``perm`` (``steps``
    iterates the step numbers, a progress bar); returns (summed loss, correct predictions)
    over the epoch's images."""
    loss_sum, correct = 0.0, 0
    for step in steps:
        idx = perm[step * batch_size:(step + 1) * batch_size]
        x, y = x_all[idx], y_all[idx]
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum, correct


def _training_log(spec: ModelSpec, model: nn.Module, *, seed: int, epochs: int, batch_size: int, lr: float,
                  threads: int, batch_norm: bool, train_size: int, test_size: int,
                  epochs_log: list[dict[str, float]], train_seconds: float) -> dict[str, Any]:
    """The training log written next to the weights: the recipe, the per-epoch log and
    the software / machine it ran on."""
    return {
        "model": spec.name,
        "dataset": spec.dataset,
        "architecture": "AllCNN",
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": "Adam + OneCycleLR",
        "lr": lr,
        "threads": threads,
        "deterministic_algorithms": True,
        "batch_norm": "trained with BatchNorm2d, folded into the convolutions" if batch_norm
                      else "none",
        "preprocessing": "float32(uint8) / 255, no normalisation",
        "train_size": train_size,
        "test_size": test_size,
        "epochs_log": epochs_log,
        "test_accuracy": epochs_log[-1].get("test_accuracy"),
        "train_seconds": train_seconds,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_result(result: TrainResult, out: str | Path) -> dict[str, Path]:
    """Write ``<stem>.pt``, ``<stem>.sha256`` and ``<stem>.json`` into directory ``out``."""
    spec = MODELS[result.log["model"]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pt = out / f"{spec.stem}.pt"
    torch.save(result.model.state_dict(), pt)
    digest = sha256_file(pt)
    sha = out / f"{spec.stem}.sha256"
    sha.write_text(f"{digest}  {pt.name}\n")
    js = out / f"{spec.stem}.json"
    js.write_text(json.dumps({**result.log, "sha256": digest}, indent=2) + "\n")
    return {"weights": pt, "sha256": sha, "log": js}


def run_training(
    name: str,
    out: str | Path,
    *,
    epochs: int = 5,
    seed: int = 0,
    subset: int | None = None,
    batch_size: int = 128,
    lr: float = 3e-3,
    threads: int | None = None,
    batch_norm: bool = True,
    progress: bool = True,
) -> tuple[TrainResult, dict[str, Path]]:
    """Load the full data set ``name``, train, evaluate on the test split, save to ``out``.

    ``subset`` keeps the first ``subset`` training images (and the first ``subset`` test
    images), for quick checks.
    """
    spec = _spec(name)
    train = load_dataset(spec.dataset, "train")
    test = load_dataset(spec.dataset, "test")
    if subset is not None:
        if subset < 1:
            raise ValueError(f"subset must be >= 1, got {subset}")
        train = ImageSet(train.images[:subset], train.labels[:subset], train.name,
                         None if train.index is None else train.index[:subset])
        test = ImageSet(test.images[:subset], test.labels[:subset], test.name,
                        None if test.index is None else test.index[:subset])
    result = train_model(spec.name, train, test, epochs=epochs, seed=seed,
                         batch_size=batch_size, lr=lr, threads=threads,
                         batch_norm=batch_norm, progress=progress)
    result.log["subset"] = subset
    return result, save_result(result, out)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Predicted classes, int64 (N,), for uint8 images (N, H, W)."""
    model.eval()
    out = [model(to_tensor(images[i:i + batch_size])).argmax(1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def build_sample(
    name: str,
    model: nn.Module | None = None,
    *,
    first: int = 500,
    max_errors: int = 100,
) -> tuple[ImageSet, dict[str, Any]]:
    """The shipped sample of a test split: deterministic, no random choice.

    The first ``first`` test images, then the test images after those that ``model``
    (default: the shipped pretrained model) misclassifies, in test-set order, up to
    ``max_errors`` of them. Returns the sample (``index`` = position in the test split)
    and a description with the model's accuracy on it.
    """
    from clear_native.models import load_pretrained, sha256_file, weights_path

    spec = _spec(name)
    if model is None:
        model = load_pretrained(spec.name)
    test = load_dataset(spec.dataset, "test")
    pred = predict(model, test.images)
    wrong = np.flatnonzero(pred != test.labels)
    extra = wrong[wrong >= first][:max_errors]
    idx = np.concatenate([np.arange(min(first, len(test))), extra]).astype(np.int64)
    sample = ImageSet(test.images[idx].copy(), test.labels[idx].copy(), spec.dataset, idx)
    correct = pred[idx] == test.labels[idx]
    info = {
        "dataset": spec.dataset,
        "split": "test",
        "rule": f"first {first} test images, then the test images after them that the model "
                f"misclassifies, in order, at most {max_errors}",
        "size": len(idx),
        "first": int(min(first, len(test))),
        "extra_misclassified": len(extra),
        "model_errors_on_test_split": len(wrong),
        "model_test_accuracy": float(1 - len(wrong) / len(test)),
        "model_correct_on_first": int(correct[:first].sum()),
        "model_correct_on_sample": int(correct.sum()),
        "model_weights_sha256": sha256_file(weights_path(spec.name)),
    }
    return sample, info


def save_sample(name: str, out: str | Path, model: nn.Module | None = None,
                **kwargs: int) -> dict[str, Path]:
    """Build the sample (:func:`build_sample`) and write ``<stem>_sample.npz`` + ``.json``."""
    from clear_native.data import save_npz

    spec = _spec(name)
    sample, info = build_sample(spec.name, model, **kwargs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = spec.dataset.replace("-", "_") + "_sample"
    npz, js = out / f"{stem}.npz", out / f"{stem}.json"
    save_npz(npz, sample)
    js.write_text(json.dumps(info, indent=2) + "\n")
    return {"sample": npz, "info": js}
