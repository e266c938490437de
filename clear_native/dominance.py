"""Per-pixel class dominance of per-class response maps (CLEAR, paper eq. 4-5)."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields

import torch

from clear_native._ops import require_device_support

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class TensorFields:
    """Helpers shared by the result dataclasses (:class:`Dominance`, ``ClearMaps``)."""

    @property
    def shape(self) -> torch.Size:
        return self.dominant_class.shape

    @property
    def device(self) -> torch.device:
        return self.dominant_class.device

    def to(self, *args, **kwargs):
        """Moves every tensor field (``Tensor.to`` arguments); a dtype applies to the
        floating point fields only (class ids stay int64)."""
        device = torch.empty(0, device=self.device).to(*args, **kwargs).device
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.to(*args, **kwargs) if v.dtype.is_floating_point else v.to(device)
            kw[f.name] = v
        return type(self)(**kw)

    def cpu(self):
        return self.to("cpu")

    def numpy(self) -> dict:
        """The public fields as numpy arrays (None stays None)."""
        out = {}
        for f in fields(self):
            if f.name.startswith("state_"):
                continue
            v = getattr(self, f.name)
            out[f.name] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        return out

    # Notebooks and analysis (implemented in clear_native.report).
    def _repr_png_(self):
        """Jupyter: the first few images' CLEAR maps with the class legend (PNG)."""
        from clear_native.report import maps_png
        return maps_png(self)

    def _repr_html_(self):
        """Jupyter: the first few images' CLEAR maps with the class legend (HTML)."""
        from clear_native.report import maps_html
        return maps_html(self)

    def to_xarray(self, class_names=None):
        """The fields as an ``xarray.Dataset`` with named dimensions (needs xarray; see
        :func:`clear_native.report.maps_xarray`)."""
        from clear_native.report import maps_xarray
        return maps_xarray(self, class_names)


@dataclass(frozen=True)
class StreamRecord:
    """What a streamed :class:`Dominance` state holds, checked when the next chunk is merged.

    ranges: the class ranges ``[start, stop)`` merged so far, sorted, disjoint and
        coalesced (one range for chunks that come in order).
    num_classes: the total number of classes, once a call declared it (``None`` before).
    runner_up, weakest: the flags every chunk was computed with.
    """

    ranges: tuple[tuple[int, int], ...] = ()
    num_classes: int | None = None
    runner_up: bool = True
    weakest: bool = True

    def merged(self, start: int, stop: int, num_classes: int | None) -> "StreamRecord":
        """This record with the classes ``[start, stop)`` added (they must not overlap)."""
        ranges = sorted(self.ranges + (((start, stop),) if stop > start else ()))
        out: list[tuple[int, int]] = []
        for a, b in ranges:
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return StreamRecord(tuple(out), num_classes, self.runner_up, self.weakest)


@dataclass
class Dominance(TensorFields):
    """Which class dominates each pixel, and by how much.

    Every field is ``(N, *spatial)``. Class fields are int64; response fields have
    the dtype of the responses. Policy: ties go to the lowest class index (as
    ``torch.argmax``); NaN never wins; a pixel with no non-NaN response (or, for
    ``runner_up_*``, fewer than two) gets class ``-1`` and response NaN.

    Fields:
        dominant_class, dominant_response: argmax / max over classes (eq. 4, 5).
        runner_up_class, runner_up_response: second best class and its response.
        weakest_class, weakest_response: argmin / min over classes.
        target: (N,) target classes, or None.
        target_response: response of the target class (the paper's positive
            focus), or None without a target.
        rival_class, rival_response: best class other than the target (the
            paper's negative focus), or None without a target.
        num_classes: classes merged so far (grows with streaming calls).
    """

    dominant_class: torch.Tensor
    dominant_response: torch.Tensor
    runner_up_class: torch.Tensor
    runner_up_response: torch.Tensor
    weakest_class: torch.Tensor
    weakest_response: torch.Tensor
    target: torch.Tensor | None = None
    target_response: torch.Tensor | None = None
    rival_class: torch.Tensor | None = None
    rival_response: torch.Tensor | None = None
    num_classes: int = 0
    # Packed running state, for merging further class chunks (see ``dominance``).
    state_values: torch.Tensor | None = field(default=None, repr=False)
    state_indices: torch.Tensor | None = field(default=None, repr=False)
    # One past the highest class merged so far: a later chunk starting at or
    # above it is merged with the cheaper in-order kernel.
    class_end: int = field(default=0, repr=False)
    # Merged class ranges, declared total and flags (see ``StreamRecord``).
    state_record: StreamRecord | None = field(default=None, repr=False)


def _check_responses(responses: torch.Tensor) -> None:
    if not isinstance(responses, torch.Tensor):
        raise TypeError(f"dominance: responses must be a torch.Tensor, got {type(responses).__name__}")
    if not 3 <= responses.dim() <= 5:
        raise ValueError(
            "dominance: responses must be (N, C, *spatial) with 1 to 3 spatial dims, "
            f"got shape {tuple(responses.shape)}")
    if responses.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            "dominance: responses must be float32, float64, float16 or bfloat16, "
            f"got {responses.dtype}")
    require_device_support(responses, "dominance")


def _check_target(target, responses: torch.Tensor, num_classes: int) -> torch.Tensor:
    n = responses.shape[0]
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"dominance: target must hold integer class indices, got {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"dominance: target must be (N,) = ({n},), got shape {tuple(target.shape)}")
    if target.device != responses.device:
        raise ValueError(
            f"dominance: target is on {target.device} but responses are on {responses.device}")
    target = target.to(torch.int64)
    if n and not torch.compiler.is_compiling():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"dominance: target classes must lie in [0, {num_classes}), got values in [{lo}, {hi}]")
    return target


def dominance(
    responses: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    state: Dominance | None = None,
    class_offset: int = 0,
    num_classes: int | None = None,
    runner_up: bool = True,
    weakest: bool = True,
) -> Dominance:
    """Per-pixel dominant class, runner-up, weakest class and target focus, in one pass.

    Args:
        responses: per-class response maps ``(N, C, *spatial)`` with 1 to 3 spatial
            dims; float32/64, float16 or bfloat16 (compared in float32); CPU or CUDA;
            any strides (channels_last and sliced inputs are read in place).
        target: ``(N,)`` class indices, optional. Adds ``target_response`` (positive
            focus) and ``rival_class`` / ``rival_response`` (best other class,
            negative focus).
        state: the result of an earlier call over other classes of the same images;
            this call merges ``responses`` into it. Chunks may come in any order; the
            result equals one call over all classes. The state records the classes
            merged so far, ``num_classes`` and the flags (:class:`StreamRecord`): a
            chunk whose classes overlap them, other ``runner_up`` / ``weakest`` flags or
            another ``num_classes`` raise ``ValueError`` (all O(1) per call).
        class_offset: global index of ``responses``' first class (for streaming).
        num_classes: total number of classes, to validate ``target`` when later
            chunks are still to come; later chunks inherit it from the state; the chunk
            must lie in ``[0, num_classes)``. Defaults to ``class_offset + C`` (or the
            classes merged so far).
        runner_up, weakest: set False to skip those fields (they are then -1/NaN).

    Returns:
        A :class:`Dominance` with fields of shape ``(N, *spatial)``.
    """
    _check_responses(responses)
    if isinstance(class_offset, bool) or not isinstance(class_offset, int) or class_offset < 0:
        raise ValueError(f"dominance: class_offset must be an int >= 0, got {class_offset!r}")
    num_classes = _check_num_classes(num_classes)
    runner_up, weakest = bool(runner_up), bool(weakest)
    c = responses.shape[1]
    if state is not None:
        _check_state(state, responses, target)
    record = _check_stream(state, class_offset, c, num_classes, runner_up, weakest)
    declared = record.num_classes
    if declared is not None and class_offset + c > declared:
        raise ValueError(
            f"dominance: this chunk's classes [{class_offset}, {class_offset + c}) lie beyond "
            f"num_classes={declared}" + ("" if num_classes is not None else " (given to an earlier chunk)"))
    total = declared if declared is not None else max(
        class_offset + c, 0 if state is None else state.class_end)
    if target is not None:
        target = _check_target(target, responses, total)
        if state is not None and state.target is not None and not torch.compiler.is_compiling():
            if not torch.equal(state.target, target):
                raise ValueError("dominance: target differs from the target of the state being merged")

    ordered = state is None or class_offset >= state.class_end
    values, indices = torch.ops.clear_native.dominance(
        responses, target,
        None if state is None else state.state_values,
        None if state is None else state.state_indices,
        class_offset, ordered, runner_up, weakest)
    result = _from_planes(values, indices, responses.dtype, target,
                          c + (0 if state is None else state.num_classes))
    result.class_end = max(class_offset + c, 0 if state is None else state.class_end)
    result.state_record = record.merged(class_offset, class_offset + c, declared)
    return result


def _check_num_classes(num_classes) -> int | None:
    """``num_classes`` as an int (None stays None); ValueError unless an int >= 0."""
    if num_classes is None:
        return None
    given = num_classes
    try:
        num_classes = -1 if isinstance(given, bool) else operator.index(given)
    except TypeError:
        num_classes = -1
    if num_classes < 0:
        raise ValueError(f"dominance: num_classes must be an int >= 0 or None, got {given!r}")
    return num_classes


def _check_state(state: Dominance, responses: torch.Tensor, target: torch.Tensor | None) -> None:
    """Checks that ``state`` is an earlier call's result over the same images: shape,
    device, whether there is a target, and the dtype of its running values."""
    n = responses.shape[0]
    if not isinstance(state, Dominance) or state.state_values is None:
        raise TypeError(
            f"dominance: state must be the Dominance of an earlier call, got {type(state).__name__}")
    if state.shape != (n, *responses.shape[2:]):
        raise ValueError(
            f"dominance: state is for maps of shape {tuple(state.shape)}, but these responses "
            f"give {(n, *responses.shape[2:])}")
    if state.device != responses.device:
        raise ValueError(
            f"dominance: state is on {state.device} but responses are on {responses.device}")
    if (state.target is None) != (target is None):
        raise ValueError(
            "dominance: every chunk of a streamed call must be given the same target "
            f"(state has {'none' if state.target is None else 'one'}, this call "
            f"{'none' if target is None else 'one'})")
    if state.state_values.dtype != (torch.float32 if responses.dtype in (torch.float16, torch.bfloat16)
                                    else responses.dtype):
        raise ValueError(
            f"dominance: state was computed from {state.dominant_response.dtype} responses, "
            f"these are {responses.dtype}")


def _check_stream(state: Dominance | None, class_offset: int, c: int, num_classes: int | None,
                  runner_up: bool, weakest: bool) -> StreamRecord:
    """Checks a chunk against the record of the state it is merged into (O(number of
    merged ranges), one range for in-order chunks); returns the record to extend."""
    if state is None or state.state_record is None:
        # A first chunk (or a hand-made state, which carries no record to check).
        return StreamRecord((), num_classes, runner_up, weakest)
    rec = state.state_record
    if (runner_up, weakest) != (rec.runner_up, rec.weakest):
        raise ValueError(
            f"dominance: this chunk has runner_up={runner_up}, weakest={weakest} but the state was "
            f"computed with runner_up={rec.runner_up}, weakest={rec.weakest}; every chunk of a "
            "streamed call must use the same flags")
    if num_classes is not None and rec.num_classes is not None and num_classes != rec.num_classes:
        raise ValueError(
            f"dominance: num_classes={num_classes} differs from num_classes={rec.num_classes} "
            "of the state being merged")
    if c:
        stop = class_offset + c
        for a, b in rec.ranges:
            if class_offset < b and a < stop:
                raise ValueError(
                    f"dominance: this chunk's classes [{class_offset}, {stop}) overlap classes "
                    f"[{a}, {b}) already merged into the state; merge each class once")
    return StreamRecord(rec.ranges, rec.num_classes if num_classes is None else num_classes,
                        rec.runner_up, rec.weakest)


def _from_planes(values: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype,
                 target: torch.Tensor | None, num_classes: int) -> Dominance:
    """Builds the result object from the packed (4, N, ...) / (3, N, ...) planes."""
    out = values if values.dtype == dtype else values.to(dtype)
    result = Dominance(
        dominant_class=indices[0], dominant_response=out[0],
        runner_up_class=indices[1], runner_up_response=out[1],
        weakest_class=indices[2], weakest_response=out[2],
        num_classes=num_classes, state_values=values, state_indices=indices)
    if target is not None:
        is_top = indices[0] == target.view(-1, *([1] * (indices.dim() - 2)))
        result.target = target
        result.target_response = out[3]
        result.rival_class = torch.where(is_top, indices[1], indices[0])
        result.rival_response = torch.where(is_top, out[1], out[0])
    return result
