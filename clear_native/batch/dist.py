"""Coordination under torchrun: RANK / WORLD_SIZE / LOCAL_RANK, the process group, and
the run's device. Chunk ``k`` is explained by rank ``k % WORLD_SIZE``; rank 0 opens OUT
and finishes the run, the other ranks wait for it where it matters."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from clear_native.io import BatchError
from clear_native.store import write_error


class Dist:
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
        """Waits for every rank."""
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
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def on_rank0(self, fn: Callable[[], Any], out: Path) -> Any:
        """``fn()`` on rank 0, its result on every rank; its error (a :class:`BatchError`,
        or an OSError writing under ``out``) raised on every rank as a :class:`BatchError`."""
        status = None
        if self.rank == 0:
            try:
                status = ("ok", fn())
            except BatchError as e:
                status = ("error", str(e))
            except OSError as e:
                status = ("error", write_error(out, e))
        status = self.broadcast(status)
        if status[0] == "error":
            raise BatchError(status[1])
        return status[1]

    def close(self) -> None:
        """Leaves the process group this object joined."""
        if self._own and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def resolve_device(device: str, dist: Dist) -> torch.device:
    """The torch device of ``--device`` (``auto``: CUDA when available; ``cuda`` under
    torchrun: this rank's LOCAL_RANK)."""
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
