"""What :class:`clear_native.Clear` returns, and the class tables it streams over.

The class table holds the global class ids considered: ``(C',)`` shared by all images
(all classes, or a ``classes=`` list) or ``(N, k)`` per image (``classes=k``: the top-k,
plus the target where it is not among them; ``-1`` pads). The streaming
:func:`clear_native.dominance` works with local indices into it; :func:`result` maps
them back to global ids.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from clear_native.dominance import Dominance, TensorFields


@dataclass
class ClearMaps(TensorFields):
    """CLEAR maps of a batch of images.

    Map fields are ``(N, H, W)`` at the input's resolution; class fields are int64
    **global** class ids (indices into the model's logits), ``-1`` where no class
    qualifies (see :class:`clear_native.Dominance` for the tie / NaN policy).

    Fields:
        dominant_class, dominant_response: argmax / max over the considered classes.
        runner_up_class, runner_up_response: second best class and its response.
        weakest_class, weakest_response: argmin / min.
        target: (N,) target classes (the prediction unless given).
        target_response: (N, H, W) response of the target class (positive focus).
        rival_class, rival_response: best class other than the target (negative focus).
        prediction: (N,) predicted classes (argmax of the logits, over all classes).
        logits: (N, C) the model's output.
        method: the back-projection method.
        signal: what was back-projected (``"response"`` or ``"logit"``; None for ``"cam"``).
        classes: the global class ids considered: None (all C classes), a (C',)
            tensor (``classes=`` list), or an (N, k) tensor of each image's top-k
            classes (``classes=k``; one extra column holds the target where it is
            not in the top-k, ``-1`` for the images that need no extra column).
        class_maps: (N, C', H, W) per-class maps in the order of ``classes`` (all
            classes when ``classes`` is None), only with ``keep_class_maps=True``.
            Padded ``-1`` slots hold NaN.
        num_classes: C, the model's number of classes.
    """

    dominant_class: torch.Tensor
    dominant_response: torch.Tensor
    runner_up_class: torch.Tensor
    runner_up_response: torch.Tensor
    weakest_class: torch.Tensor
    weakest_response: torch.Tensor
    target: torch.Tensor
    target_response: torch.Tensor
    rival_class: torch.Tensor
    rival_response: torch.Tensor
    prediction: torch.Tensor
    logits: torch.Tensor
    method: str
    classes: torch.Tensor | None = None
    class_maps: torch.Tensor | None = None
    num_classes: int = 0
    signal: str | None = None

    def render(self, *args, **kwargs):
        """The CLEAR image (see :func:`clear_native.render.render`)."""
        from clear_native.render import render

        return render(self, *args, **kwargs)


def as_target(target, n: int, device) -> torch.Tensor:
    """``target`` as an (N,) int64 tensor on ``device`` (type and shape checked)."""
    target = torch.as_tensor(target, device=device)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"Clear: target must hold integer class ids, got {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"Clear: target must be (N,) = ({n},), got shape {tuple(target.shape)}")
    return target.to(torch.int64)


def check_target(target, n: int, c: int, device, prediction: torch.Tensor) -> torch.Tensor:
    if target is None:
        return prediction
    target = as_target(target, n, device)
    if n and (int(target.min()) < 0 or int(target.max()) >= c):
        raise ValueError(f"Clear: target classes must lie in [0, {c}), got values in "
                         f"[{int(target.min())}, {int(target.max())}]")
    return target


def class_table(classes, logits: torch.Tensor, target: torch.Tensor):
    """(table, local target, pad mask): table is (C',) shared or (N, k) per image,
    local target indexes it, pad (N, k) marks padded slots (or None)."""
    n, c = logits.shape
    device = logits.device
    if classes is None:
        return torch.arange(c, device=device), target, None
    if isinstance(classes, int) and not isinstance(classes, bool):
        if not 1 <= classes <= c:
            raise ValueError(f"Clear: classes=k must lie in [1, {c}], got {classes}")
        table = logits.topk(classes, dim=1).indices  # (N, k), best first
        hit = table == target.view(-1, 1)
        missing = ~hit.any(1)
        if bool(missing.any()):  # one extra column for the targets outside the top-k
            extra = torch.where(missing, target, torch.full_like(target, -1))
            table = torch.cat([table, extra.view(-1, 1)], 1)
            hit = table == target.view(-1, 1)
        local = hit.to(torch.uint8).argmax(1)
        pad = table < 0
        return table, local, pad if bool(pad.any()) else None
    table = torch.as_tensor(classes, device=device)
    if table.dtype.is_floating_point or table.dtype == torch.bool or table.dim() != 1 or table.numel() == 0:
        raise ValueError("Clear: classes must be None, an int k, or a non-empty 1-D list of class ids, "
                         f"got {classes!r}")
    table = table.to(torch.int64)
    if int(table.min()) < 0 or int(table.max()) >= c:
        raise ValueError(f"Clear: classes must lie in [0, {c}), got values in "
                         f"[{int(table.min())}, {int(table.max())}]")
    if table.unique().numel() != table.numel():
        raise ValueError(f"Clear: classes must not repeat, got {table.tolist()}")
    hit = table.view(1, -1) == target.view(-1, 1)  # (N, C')
    if not bool(hit.any(1).all()):
        bad = target[~hit.any(1)].tolist()
        raise ValueError(f"Clear: the target classes {bad} are not among classes={table.tolist()}; "
                         "add them to classes= or pass target=")
    return table, hit.to(torch.uint8).argmax(1), None


def _to_global(local: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Maps local class indices (N, H, W) (``-1`` = none) to global ids via ``table``."""
    safe = local.clamp(min=0)
    if table.dim() == 1:
        out = table[safe]
    else:
        out = table.gather(1, safe.flatten(1)).view_as(local)
    return torch.where(local < 0, local, out)


def result(state: Dominance, table, target, prediction, logits, method, classes, kept, c) -> ClearMaps:
    shared_all = classes is None
    g = (lambda t: t) if shared_all else (lambda t: _to_global(t, table))
    return ClearMaps(
        dominant_class=g(state.dominant_class), dominant_response=state.dominant_response,
        runner_up_class=g(state.runner_up_class), runner_up_response=state.runner_up_response,
        weakest_class=g(state.weakest_class), weakest_response=state.weakest_response,
        target=target, target_response=state.target_response,
        rival_class=g(state.rival_class), rival_response=state.rival_response,
        prediction=prediction, logits=logits, method=method,
        classes=None if shared_all else table, class_maps=kept, num_classes=c)


def cat_maps(parts: list[ClearMaps]) -> ClearMaps:
    """Joins the ClearMaps of consecutive image chunks (one shared class table)."""
    first = parts[0]
    values = {}
    for f in fields(ClearMaps):
        v = getattr(first, f.name)
        if f.name == "classes" or not isinstance(v, torch.Tensor):
            values[f.name] = v
        else:
            values[f.name] = torch.cat([getattr(p, f.name) for p in parts], 0)
    return ClearMaps(**values)
