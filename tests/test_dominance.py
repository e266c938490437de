"""clear_native.dominance against clear_native.reference.dominance."""

import pytest
import torch

import clear_native
from clear_native import reference
from conftest import LOWER_CPU_BODIES, run_with_baseline_cpu_build, DEVICES, FLOAT_DTYPES

FIELDS = ["dominant_class", "dominant_response", "runner_up_class", "runner_up_response",
          "weakest_class", "weakest_response"]
TARGET_FIELDS = ["target_response", "rival_class", "rival_response"]


def assert_same(got, want, with_target=False):
    for name in FIELDS + (TARGET_FIELDS if with_target else []):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == w.dtype, (name, g.dtype, w.dtype)
        # Selections, not arithmetic: exact equality, NaN where NaN.
        torch.testing.assert_close(g.cpu(), w.cpu(), rtol=0, atol=0, equal_nan=True, msg=name)


def rand_responses(shape, dtype, device, kind="normal"):
    if kind == "normal":
        x = torch.randn(shape, dtype=torch.float64)
    elif kind == "ties":  # few distinct values: many ties
        x = torch.randint(0, 3, shape).to(torch.float64)
    elif kind == "specials":  # NaN, +-inf, ties, signed zeros
        x = torch.randint(0, 4, shape).to(torch.float64)
        r = torch.rand(shape)
        x[r < 0.15] = float("nan")
        x[(r >= 0.15) & (r < 0.2)] = float("inf")
        x[(r >= 0.2) & (r < 0.25)] = float("-inf")
        x[(r >= 0.25) & (r < 0.3)] = -0.0
    else:
        raise ValueError(kind)
    return x.to(dtype=dtype, device=device)


SHAPES = [
    (2, 1, 5, 5),      # one class
    (2, 2, 7, 9),      # two classes, odd sizes
    (3, 10, 13, 17),
    (2, 37, 9, 31),    # classes not a multiple of the unroll, pixels not of the SIMD width
    (1, 16, 64, 65),   # several tiles
    (2, 5, 11),        # 1-D spatial
    (2, 4, 3, 5, 6),   # 3-D spatial
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["normal", "ties", "specials"])
def test_matches_reference(shape, dtype, device, kind):
    x = rand_responses(shape, dtype, device, kind)
    target = torch.randint(0, shape[1], (shape[0],), device=device)
    assert_same(clear_native.dominance(x), reference.dominance(x))
    assert_same(clear_native.dominance(x, target), reference.dominance(x, target), with_target=True)


@pytest.mark.parametrize("device", DEVICES)
def test_large_tile_count_float32(device):
    x = rand_responses((3, 24, 70, 70), torch.float32, device, "specials")
    assert_same(clear_native.dominance(x), reference.dominance(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded", "class_stride"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_inputs(layout, dtype, device):
    base = rand_responses((3, 9, 12, 14), dtype, device, "specials")
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = base.transpose(2, 3)
    elif layout == "sliced":
        x = base[:, 1::2, ::2, 1:]
    elif layout == "expanded":
        x = base[:, :, :1, :].expand(3, 9, 5, 14)
    else:
        x = base.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x.is_contiguous()
    target = torch.randint(0, x.shape[1], (3,), device=device)
    assert_same(clear_native.dominance(x, target), reference.dominance(x, target), with_target=True)


def test_documented_policy_by_hand():
    nan, inf = float("nan"), float("inf")
    # One image, 4 classes, 5 pixels.
    x = torch.tensor([[
        [1.0, nan, 2.0, -inf, nan],
        [3.0, nan, 2.0, -inf, 5.0],
        [3.0, nan, 1.0, -inf, nan],
        [0.0, nan, 2.0, -inf, nan],
    ]])
    d = clear_native.dominance(x, torch.tensor([2]))
    assert d.dominant_class.tolist() == [[1, -1, 0, 0, 1]]          # ties -> lowest index
    assert d.runner_up_class.tolist() == [[2, -1, 1, 1, -1]]        # one valid class -> no runner-up
    assert d.weakest_class.tolist() == [[3, -1, 2, 0, 1]]
    assert d.dominant_response[0, 1].isnan() and d.dominant_response[0, 3] == -inf
    assert d.rival_class.tolist() == [[1, -1, 0, 0, 1]]             # target 2 is not top anywhere
    assert d.target_response[0, 0] == 3.0 and d.target_response[0, 4].isnan()
    y = torch.tensor([[[1.0], [4.0], [2.0]]])
    e = clear_native.dominance(y, torch.tensor([1]))
    assert e.rival_class.item() == 2 and e.rival_response.item() == 2.0
    assert e.target_response.item() == 4.0


def test_empty_inputs():
    for shape in [(0, 3, 4, 5), (2, 3, 0, 5), (0, 1, 0)]:
        x = torch.randn(shape)
        d = clear_native.dominance(x)
        assert d.dominant_class.shape == (shape[0], *shape[2:])
        assert d.dominant_class.dtype == torch.int64 and d.dominant_response.dtype == torch.float32
    # No classes at all: every pixel is empty.
    d = clear_native.dominance(torch.randn(2, 0, 3, 3))
    assert (d.dominant_class == -1).all() and d.dominant_response.isnan().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("order", ["ascending", "shuffled", "descending"])
def test_streaming_equals_one_call(chunk, order, dtype, device):
    n, c = 2, 13
    x = rand_responses((n, c, 6, 7), dtype, device, "specials")
    target = torch.tensor([3, 12], device=device)
    starts = list(range(0, c, chunk))
    if order == "shuffled":
        starts = [starts[i] for i in torch.randperm(len(starts)).tolist()]
    elif order == "descending":
        starts = starts[::-1]
    state = None
    for s in starts:
        state = clear_native.dominance(x[:, s:s + chunk], target, state=state, class_offset=s,
                                       num_classes=c)
    assert state.num_classes == c
    assert_same(state, reference.dominance(x, target), with_target=True)


def test_streaming_state_checks():
    x = torch.randn(2, 4, 5, 5)
    d = clear_native.dominance(x)
    with pytest.raises(ValueError, match="state is for maps of shape"):
        clear_native.dominance(torch.randn(2, 4, 5, 6), state=d, class_offset=4)
    with pytest.raises(ValueError, match="same target"):
        clear_native.dominance(x, torch.tensor([0, 1]), state=d, class_offset=4)
    with pytest.raises(ValueError, match="computed from"):
        clear_native.dominance(x.double(), state=d, class_offset=4)
    with pytest.raises(TypeError, match="Dominance of an earlier call"):
        clear_native.dominance(x, state=object(), class_offset=4)
    dt = clear_native.dominance(x, torch.tensor([0, 1]), num_classes=8)
    with pytest.raises(ValueError, match="target differs"):
        clear_native.dominance(x, torch.tensor([0, 2]), state=dt, class_offset=4)


def cpu_kernel(op, *args):
    """Calls op's CPU kernel itself (its C++ front end), bypassing the dispatcher's
    choice: a call with a meta argument would otherwise go to the fake kernel."""
    return op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args)


def mixed_device_args(bad):
    """(responses, target, state_values, state_indices) with argument `bad` on meta."""
    x = torch.randn(2, 3, 4, 5)
    t = torch.tensor([0, 2])
    v, i = torch.ops.clear_native.dominance(x, t)
    args = {"responses": x, "target": t, "state_values": v, "state_indices": i}
    args[bad] = args[bad].to("meta")
    return tuple(args.values())


@pytest.mark.parametrize("bad", ["target", "state_values", "state_indices"])
def test_operator_refuses_an_argument_on_another_device(bad):
    # A meta tensor among CPU ones used to reach the fake kernel and return
    # uninitialised CPU memory; the fake kernel and the C++ front end both refuse it.
    op = torch.ops.clear_native.dominance.default
    args = mixed_device_args(bad)
    msg = rf"dominance: {bad} must be on the device of responses \(cpu\), got meta"
    with pytest.raises(RuntimeError, match=msg):
        op(*args, 3)
    with pytest.raises(RuntimeError, match=msg):
        cpu_kernel(op, *args, 3, False, True, True)
    # The other way round: meta responses, CPU rest.
    x, t, v, i = mixed_device_args("responses")
    with pytest.raises(RuntimeError, match=r"target must be on the device of responses \(meta\), got cpu"):
        op(x, t)


def test_all_meta_inputs_still_trace():
    # torch.compile / FakeTensor tracing: every input on meta is fine.
    x = torch.randn(2, 3, 4, 5, device="meta")
    t = torch.zeros(2, dtype=torch.int64, device="meta")
    v, i = torch.ops.clear_native.dominance(x, t)
    v, i = torch.ops.clear_native.dominance(x, t, v, i, 3)
    assert v.device.type == "meta" and v.shape == (4, 2, 4, 5) and i.shape == (3, 2, 4, 5)
    assert v.dtype == torch.float32 and i.dtype == torch.int64


def test_streaming_merging_a_class_twice_is_refused():
    x = torch.randn(2, 6, 5, 5)
    d = clear_native.dominance(x[:, :3], num_classes=6)
    with pytest.raises(ValueError, match=r"classes \[0, 3\) overlap classes \[0, 3\) already merged"):
        clear_native.dominance(x[:, :3], state=d, num_classes=6)
    with pytest.raises(ValueError, match=r"classes \[2, 5\) overlap classes \[0, 3\)"):
        clear_native.dominance(x[:, 2:5], state=d, class_offset=2)
    d = clear_native.dominance(x[:, 4:], state=d, class_offset=4)    # [0, 3) + [4, 6)
    with pytest.raises(ValueError, match=r"classes \[3, 5\) overlap classes \[4, 6\)"):
        clear_native.dominance(x[:, 3:5], state=d, class_offset=3)
    d = clear_native.dominance(x[:, 3:4], state=d, class_offset=3)   # fills the gap
    assert d.state_record.ranges == ((0, 6),)
    assert_same(d, reference.dominance(x))
    # Empty chunks merge nothing and overlap nothing.
    e = clear_native.dominance(x[:, :0], state=d, class_offset=2)
    assert_same(e, reference.dominance(x))


@pytest.mark.parametrize("flags", [(False, True), (True, False), (False, False)])
def test_streaming_chunks_with_other_flags_are_refused(flags):
    runner_up, weakest = flags
    x = torch.randn(2, 6, 5, 5)
    d = clear_native.dominance(x[:, :3])
    with pytest.raises(ValueError, match=rf"runner_up={runner_up}, weakest={weakest} but the state was "
                                         r"computed with runner_up=True, weakest=True"):
        clear_native.dominance(x[:, 3:], state=d, class_offset=3, runner_up=runner_up, weakest=weakest)
    d = clear_native.dominance(x[:, :3], runner_up=runner_up, weakest=weakest)
    with pytest.raises(ValueError, match="every chunk of a streamed call must use the same flags"):
        clear_native.dominance(x[:, 3:], state=d, class_offset=3)
    d = clear_native.dominance(x[:, 3:], state=d, class_offset=3, runner_up=runner_up, weakest=weakest)
    assert torch.equal(d.dominant_class, reference.dominance(x).dominant_class)


def test_streaming_offset_and_num_classes_are_checked():
    x = torch.randn(2, 6, 5, 5)
    with pytest.raises(ValueError, match=r"classes \[4, 10\) lie beyond num_classes=8"):
        clear_native.dominance(x, class_offset=4, num_classes=8)
    d = clear_native.dominance(x[:, :3], num_classes=6)
    with pytest.raises(ValueError, match=r"num_classes=7 differs from num_classes=6 of the state"):
        clear_native.dominance(x[:, 3:], state=d, class_offset=3, num_classes=7)
    with pytest.raises(ValueError, match=r"classes \[4, 7\) lie beyond num_classes=6 \(given to an earlier"):
        clear_native.dominance(x[:, 3:], state=d, class_offset=4)
    with pytest.raises(ValueError, match="num_classes must be an int >= 0 or None"):
        clear_native.dominance(x, num_classes=-1)
    # A later chunk inherits the declared total (target checked against all 6 classes).
    t = torch.tensor([5, 1])
    d = clear_native.dominance(x[:, :3], t, num_classes=6)
    d = clear_native.dominance(x[:, 3:], t, state=d, class_offset=3)
    assert d.state_record.num_classes == 6
    assert_same(d, reference.dominance(x, t), with_target=True)
    # Without a declared total, chunks in descending order validate the target
    # against every class merged so far.
    d = clear_native.dominance(x[:, 3:], t, class_offset=3)
    d = clear_native.dominance(x[:, :3], t, state=d)
    assert_same(d, reference.dominance(x, t), with_target=True)


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\).*got shape \(3, 4\)"):
        clear_native.dominance(torch.randn(3, 4))
    with pytest.raises(ValueError, match="1 to 3 spatial dims"):
        clear_native.dominance(torch.randn(1, 2, 3, 4, 5, 6))
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16, got torch.int64"):
        clear_native.dominance(torch.ones(1, 2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        clear_native.dominance([[1.0]])
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 3\), got values in \[0, 3\]"):
        clear_native.dominance(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 3\)"):
        clear_native.dominance(x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"target must be \(N,\) = \(2,\), got shape \(3,\)"):
        clear_native.dominance(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer class indices"):
        clear_native.dominance(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="target is on meta but responses are on cpu"):
        clear_native.dominance(x, torch.zeros(2, dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match="class_offset must be an int >= 0"):
        clear_native.dominance(x, class_offset=-1)


def test_operator_checks_without_wrapper():
    # The operator itself also refuses bad input with a clear message.
    op = torch.ops.clear_native.dominance
    with pytest.raises(RuntimeError, match="responses must be \\(N, C, \\*spatial\\)"):
        op(torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="float32, float64, float16 or bfloat16, got Int"):
        op(torch.ones(1, 2, 3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="state is for a different shape"):
        op(torch.randn(1, 2, 3), None, torch.zeros(4, 1, 4), torch.zeros(3, 1, 4, dtype=torch.int64))


def test_cuda_tensor_on_cpu_build_is_refused():
    if clear_native.build_info()["cuda"]:
        pytest.skip("this build has CUDA kernels")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device to make a CUDA tensor")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        clear_native.dominance(torch.randn(1, 2, 3, device="cuda"))


def test_runner_up_and_weakest_can_be_skipped():
    x = torch.randn(2, 6, 5, 5)
    d = clear_native.dominance(x, runner_up=False, weakest=False)
    r = reference.dominance(x)
    assert torch.equal(d.dominant_class, r.dominant_class)
    assert (d.runner_up_class == -1).all() and (d.weakest_class == -1).all()


def test_opcheck():
    # opcheck compares outputs without equal_nan, so every plane must be filled:
    # a target (else its plane is NaN) and at least two classes.
    x = torch.randn(2, 5, 6, 7)
    t = torch.tensor([1, 4])
    op = torch.ops.clear_native.dominance.default
    torch.library.opcheck(op, (x, t))
    torch.library.opcheck(op, (x.half(), t))
    torch.library.opcheck(op, (x.transpose(2, 3), t))
    t = torch.tensor([1, 2])
    v, i = op(x[:, :3], t)
    torch.library.opcheck(op, (x[:, 3:], t, v, i, 3, True, True, False))
    torch.library.opcheck(op, (x[:, :2], t, v, i, 0, False))


def test_torch_compile_fullgraph():
    def f(x, t):
        d = clear_native.dominance(x, t)
        return d.dominant_class, d.dominant_response * 2, d.rival_class

    x = torch.randn(2, 7, 9, 9)
    t = torch.tensor([0, 6])
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    for got, want in zip(compiled(x, t), f(x, t)):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_result_object_helpers():
    x = torch.randn(2, 4, 3, 3)
    d = clear_native.dominance(x, torch.tensor([1, 2]))
    arrays = d.numpy()
    assert arrays["dominant_class"].shape == (2, 3, 3) and "state_values" not in arrays
    moved = d.to(torch.float64)
    assert moved.dominant_response.dtype == torch.float64
    assert moved.dominant_class.dtype == torch.int64  # class ids keep their type
    assert d.cpu().dominant_class.device.type == "cpu"


@pytest.mark.parametrize("body", LOWER_CPU_BODIES)
def test_baseline_simd_build_matches_reference(body):
    """The scalar (and, on AVX-512 CPUs, the AVX2) CPU bodies, forced through the environment."""
    code = (
        "import torch, clear_native\n"
        "from clear_native import reference\n"
        f"assert clear_native.build_info()['cpu_capability'] == {body!r}\n"
        "torch.manual_seed(0)\n"
        "for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):\n"
        "    x = torch.randint(0, 4, (2, 19, 9, 37)).to(dt)\n"
        "    x[torch.rand(x.shape) < 0.1] = float('nan')\n"
        "    t = torch.tensor([0, 18])\n"
        "    a, b = clear_native.dominance(x, t), reference.dominance(x, t)\n"
        "    for f in ('dominant_class', 'dominant_response', 'runner_up_class', 'runner_up_response',\n"
        "              'weakest_class', 'weakest_response', 'target_response', 'rival_class'):\n"
        "        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=0, atol=0, equal_nan=True)\n"
        "print('ok')\n")
    run_with_baseline_cpu_build(code, body)


# The AVX2 body's fast paths: 16 pixels per step (32 for the dominant class alone),
# then 8, then the scalar tail; class blocks of 2 (the first), 8, 4, 2, 1; slots that
# hold a class take dominance_update_filled (max / min, no NaN tests), others the
# general update, decided per block and pixel group. Pixel counts around the step
# widths and the 1024-pixel tile, class counts around the block sizes, and inputs that
# keep some slots empty for a while (NaN in the first classes), -inf and ties.
FAST_PATH_SHAPES = [(1, 2, 16), (2, 3, 47), (1, 9, 33), (2, 11, 1024 + 40 + 7), (1, 27, 2, 37),
                    (2, 120, 5, 13)]


def edge_responses(shape, kind, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    c = shape[1]
    if kind == "nan_first":    # slots fill late, lane by lane; NaN later too
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        first = torch.rand(shape, generator=g) < torch.where(torch.arange(c) < 5, 0.6, 0.05).view(
            1, c, *([1] * (len(shape) - 2)))
        x[first] = float("nan")
    elif kind == "neg_inf":    # -inf everywhere, often first: ties with an "empty" -inf
        x = torch.randint(-1, 2, shape, generator=g).to(torch.float64)
        x[torch.rand(shape, generator=g) < 0.4] = float("-inf")
    elif kind == "ties":       # few values, +-0 among them
        x = torch.randint(-1, 2, shape, generator=g).to(torch.float64)
        x = torch.where((x == 0) & (torch.rand(shape, generator=g) < 0.5), -0.0, x)
    else:                      # smooth: long runs without a change of winner
        x = torch.randn(shape, generator=g, dtype=torch.float64).cumsum(-1) / 8
    return x.to(dtype)


@pytest.mark.parametrize("flags", [(True, True), (True, False), (False, True), (False, False)], ids=str)
@pytest.mark.parametrize("kind", ["nan_first", "neg_inf", "ties", "smooth"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", FAST_PATH_SHAPES, ids=str)
def test_fast_paths_match_reference(shape, dtype, kind, flags):
    runner_up, weakest = flags
    x = edge_responses(shape, kind, dtype)
    target = torch.tensor([shape[1] - 1, 0][:shape[0]])
    got = clear_native.dominance(x, target, runner_up=runner_up, weakest=weakest)
    want = reference.dominance(x, target)
    names = FIELDS[:2] + (FIELDS[2:4] if runner_up else []) + (FIELDS[4:] if weakest else [])
    for name in names + ["target_response"] + (["rival_class", "rival_response"] if runner_up else []):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0, equal_nan=True,
                                   msg=name)
    if not runner_up:
        assert (got.runner_up_class == -1).all() and got.runner_up_response.isnan().all()
    if not weakest:
        assert (got.weakest_class == -1).all() and got.weakest_response.isnan().all()


def test_fast_paths_stream_from_a_filled_state():
    """Ordered chunks after the first start from slots that hold a class (the fast
    update from the first class of the chunk); the result equals one call."""
    x = edge_responses((2, 61, 3, 45), "nan_first", torch.float32)
    target = torch.tensor([60, 7])
    state = None
    for s in (0, 9, 10, 27, 43):
        stop = {0: 9, 9: 10, 10: 27, 27: 43, 43: 61}[s]
        state = clear_native.dominance(x[:, s:stop], target, state=state, class_offset=s, num_classes=61)
    assert_same(state, reference.dominance(x, target), with_target=True)


def _kernel_cases():
    """Raw operator outputs over the fast paths' edge cases (both orders, every flag)."""
    op = torch.ops.clear_native.dominance
    out = []
    for shape in [(2, 11, 1071), (1, 27, 2, 37), (2, 3, 47)]:
        for kind in ("nan_first", "neg_inf", "ties", "smooth"):
            for dtype in (torch.float32, torch.float16, torch.float64):
                x = edge_responses(shape, kind, dtype)
                t = torch.tensor([shape[1] - 1, 0][:shape[0]])
                for ordered in (True, False):
                    for flags in ((True, True), (True, False), (False, True), (False, False)):
                        out.append(op(x, t, None, None, 0, ordered, *flags))
                v, i = op(x[:, :5], t, None, None, 0, True, True, True)
                out.append(op(x[:, 5:], t, v, i, 5, True, True, True))
    return out


def _bits(v):
    return v.view({torch.float64: torch.int64, torch.float32: torch.int32}[v.dtype])


@pytest.mark.parametrize("body", LOWER_CPU_BODIES)
def test_baseline_simd_build_is_bit_identical(tmp_path, body):
    """The scalar body (and the AVX2 one on AVX-512 CPUs) gives the active body's
    values bit for bit, signed zeros and NaN included (what assert_close cannot see)."""
    path = tmp_path / "baseline.pt"
    code = (
        "import torch, clear_native, test_dominance\n"
        f"assert clear_native.build_info()['cpu_capability'] == {body!r}\n"
        f"torch.save(test_dominance._kernel_cases(), {str(path)!r})\n"
        "print('ok')\n")
    run_with_baseline_cpu_build(code, body)
    for (v, i), (bv, bi) in zip(_kernel_cases(), torch.load(path)):
        assert torch.equal(_bits(v), _bits(bv)) and torch.equal(i, bi)


@pytest.mark.parametrize("flags", [(True, True), (True, False), (False, True), (False, False)], ids=str)
@pytest.mark.parametrize("kind", ["nan_first", "neg_inf", "ties", "smooth"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_in_order_update_equals_the_general_one(dtype, kind, flags):
    """One call in order (ordered=True: the fast paths) against the general,
    order-independent update (ordered=False: no fast path), bit for bit: signed
    zeros, ties and NaN included, which a comparison with the reference cannot see."""
    op = torch.ops.clear_native.dominance
    for shape in [(2, 11, 1071), (1, 27, 2, 37), (2, 3, 47)]:
        x = edge_responses(shape, kind, dtype)
        t = torch.tensor([shape[1] - 1, 0][:shape[0]])
        fast = op(x, t, None, None, 0, True, *flags)
        # Without a state a call counts as ordered: an all-empty state forces the
        # general update.
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        empty_v = torch.full((4, shape[0], *shape[2:]), float("nan"), dtype=acc)
        empty_i = torch.full((3, shape[0], *shape[2:]), -1, dtype=torch.int64)
        general = op(x, t, empty_v, empty_i, 0, False, *flags)
        assert torch.equal(_bits(fast[0]), _bits(general[0])) and torch.equal(fast[1], general[1])
