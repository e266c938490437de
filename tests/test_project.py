"""clear_native.project_dominance (fused class projection + upsample + dominance)
against the plain-PyTorch reference, and the pruning's exactness."""
import pytest
import torch
import torch.nn.functional as F

import clear_native
from clear_native import reference
from conftest import DEVICES, LOWER_CPU_BODIES, run_with_baseline_cpu_build

op = torch.ops.clear_native.upsample_dominance.default
PLANE_FIELDS = [("dominant_class", "dominant_response"), ("runner_up_class", "runner_up_response")]


def upsampled(features, weight, bias, size, mode, align_corners):
    maps = reference.class_maps(features.double(), weight.double(), None if bias is None else bias.double())
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    return F.interpolate(maps, size=size, mode=mode, **kwargs)


def assert_valid_choice(got_cls, got_val, ref_maps, want_cls, want_val, *, largest, tol):
    """The native choice is a true extreme up to rounding: its class's reference
    value is within tol of the reference extreme, and where the reference's
    extreme is not a near-tie the classes agree."""
    got_cls, got_val = got_cls.cpu(), got_val.cpu().double()
    valid = want_cls >= 0
    assert torch.equal(got_cls >= 0, valid)
    picked = ref_maps.gather(1, got_cls.clamp(min=0).unsqueeze(1)).squeeze(1)
    scale = 1 + want_val.abs()
    assert ((picked - want_val).abs() <= tol * scale)[valid].all()
    torch.testing.assert_close(got_val[valid], want_val[valid], rtol=tol, atol=tol)
    # Classes strictly apart by more than tol must agree.
    others = ref_maps.masked_fill(F.one_hot(want_cls.clamp(min=0), ref_maps.shape[1]).movedim(-1, 1).bool(),
                                  float("-inf") if largest else float("inf"))
    gap = (want_val - (others.amax(1) if largest else others.amin(1))).abs()
    clear = valid & (gap > 4 * tol * scale)
    assert torch.equal(got_cls[clear], want_cls[clear])


def check(features, weight, bias, size, mode="bilinear", align_corners=False, target=None, tol=1e-4,
          **kwargs):
    got = clear_native.project_dominance(features, weight, bias, size=size, mode=mode,
                                         align_corners=align_corners, target=target, **kwargs)
    maps = upsampled(features.cpu(), weight.cpu(), None if bias is None else bias.cpu(), size, mode,
                     align_corners)
    want = reference.dominance(maps, None if target is None else target.cpu())
    assert got.dominant_class.shape == (features.shape[0], *size)
    assert got.dominant_response.dtype == features.dtype
    assert_valid_choice(got.dominant_class, got.dominant_response, maps, want.dominant_class,
                        want.dominant_response, largest=True, tol=tol)
    assert_valid_choice(got.weakest_class, got.weakest_response, maps, want.weakest_class,
                        want.weakest_response, largest=False, tol=tol)
    if weight.shape[0] > 1:
        # Runner-up: the best once the (native) winner is removed.
        masked = maps.scatter(1, got.dominant_class.cpu().unsqueeze(1), float("-inf"))
        want2 = reference.dominance(masked)
        assert_valid_choice(got.runner_up_class, got.runner_up_response, masked, want2.dominant_class,
                            want2.dominant_response, largest=True, tol=tol)
    if target is not None:
        torch.testing.assert_close(got.target_response.cpu().double(), want.target_response,
                                   rtol=tol, atol=tol)
    return got


GEOMETRIES = [
    # (h, w) -> (H, W)
    ((7, 7), (28, 28)),      # the MNIST shape: x4
    ((7, 7), (112, 112)),    # x16
    ((5, 6), (13, 29)),      # odd, non-integer scales, non-square
    ((9, 9), (4, 5)),        # downsampling
    ((1, 1), (6, 7)),        # 1x1 features
    ((1, 5), (8, 9)),        # h == 1
    ((6, 1), (11, 3)),       # w == 1
    ((3, 4), (3, 4)),        # same size
    ((4, 4), (8, 8)),        # exactly x2
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True), ("nearest", False)])
def test_matches_reference(geometry, mode, align_corners, device):
    (h, w), size = geometry
    features = torch.randn(2, 6, h, w, device=device)
    weight = torch.randn(10, 6, device=device)
    bias = torch.randn(10, device=device)
    target = torch.tensor([3, 9], device=device)
    check(features, weight, bias, size, mode, align_corners, target)


@pytest.mark.parametrize("c", [1, 2, 10, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_class_counts(c, with_bias):
    features = torch.relu(torch.randn(2, 16, 5, 5))
    weight = torch.randn(c, 16)
    bias = torch.randn(c) if with_bias else None
    check(features, weight, bias, (23, 19), target=torch.tensor([0, c - 1]))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_dtypes(dtype, tol):
    features = torch.randn(2, 8, 4, 5).to(dtype)
    weight = torch.randn(7, 8).to(dtype)
    got = check(features.double(), weight.double(), None, (9, 11), tol=1e-10) if dtype == torch.float64 else None
    got = clear_native.project_dominance(features, weight, size=(9, 11))
    assert got.dominant_response.dtype == dtype
    maps = upsampled(features.float(), weight.float(), None, (9, 11), "bilinear", False)
    want = reference.dominance(maps)
    assert_valid_choice(got.dominant_class, got.dominant_response, maps, want.dominant_class,
                        want.dominant_response, largest=True, tol=tol)


def test_non_contiguous_features_and_weight():
    base = torch.randn(2, 9, 6, 8)
    features = base.transpose(2, 3)          # (2, 9, 8, 6), not contiguous
    weight = torch.randn(9, 12).t()          # (12, 9), not contiguous
    check(features, weight, torch.randn(12), (17, 15))
    check(base.contiguous(memory_format=torch.channels_last), torch.randn(5, 9), None, (12, 16))


ADVERSARIAL = ["constant", "one_class_everywhere", "near_ties", "ramps", "specials"]


def adversarial_maps(kind, n=2, c=12, h=5, w=6):
    g = torch.Generator().manual_seed(1)
    if kind == "constant":                  # every class equal everywhere: ties -> class 0
        return torch.full((n, c, h, w), 0.5)
    if kind == "one_class_everywhere":
        m = torch.randn(n, c, h, w, generator=g)
        m[:, 7] += 100
        return m
    if kind == "near_ties":                 # classes 1 ulp-ish apart
        base = torch.randn(n, 1, h, w, generator=g)
        return base + torch.arange(c).view(1, c, 1, 1) * 1e-7 * torch.randint(0, 2, (n, c, h, w), generator=g)
    if kind == "ramps":                     # crossing linear ramps: winners change inside cells
        y = torch.linspace(-1, 1, h).view(1, 1, h, 1)
        x = torch.linspace(-1, 1, w).view(1, 1, 1, w)
        a = torch.randn(n, c, 1, 1, generator=g)
        b = torch.randn(n, c, 1, 1, generator=g)
        return a * x + b * y + 0.01 * torch.randn(n, c, 1, 1, generator=g)
    if kind == "specials":
        m = torch.randint(0, 3, (n, c, h, w), generator=g).float()
        r = torch.rand(n, c, h, w, generator=g)
        m[r < 0.05] = float("nan")
        m[(r > 0.05) & (r < 0.08)] = float("inf")
        m[(r > 0.08) & (r < 0.11)] = float("-inf")
        return m
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ADVERSARIAL)
@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True), ("nearest", False)])
@pytest.mark.parametrize("size", [(23, 31), (3, 4)], ids=str)
def test_pruning_is_exact(kind, mode, align_corners, size):
    """Pruned and unpruned kernels give bit-identical results."""
    maps = adversarial_maps(kind)
    t = torch.tensor([2, 7])
    pruned = op(maps, list(size), mode, align_corners, t, prune=2)
    full = op(maps, list(size), mode, align_corners, t, prune=0)
    for a, b in zip(pruned, full):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    if kind != "specials":  # inf * 0 weights make NaN in both; compare the rest to torch
        kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
        want = reference.dominance(F.interpolate(maps, size=size, mode=mode, **kwargs), t)
        values, indices = pruned
        if kind == "one_class_everywhere":
            assert torch.equal(indices[0], want.dominant_class)
        if kind == "constant":
            # Exactly tied everywhere: the lowest class wins. (torch's own
            # F.interpolate is not channel-consistent here: its vectorised and
            # tail paths round a constant differently by 1 ulp, so the
            # reference's argmax is not used.)
            assert (indices[0] == 0).all() and (indices[1] == 1).all() and (indices[2] == 0).all()
        torch.testing.assert_close(values[0], want.dominant_response, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(values[3], want.target_response, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["near_ties", "ramps", "specials", "low_rank"])
@pytest.mark.parametrize("geometry", [((7, 7), (224, 224)), ((4, 5), (150, 171))], ids=str)
def test_sub_block_pruning_is_exact(kind, geometry):
    """Wide cells (32x32 pixels and more): the survivors of each cell are pruned again
    per block of output pixels (against the blocks' corner pixels, with a wider
    rounding margin); still bit for bit every class at every pixel, with near-ties a
    few ulps apart, winners changing inside cells, NaN and infinities."""
    (h, w), size = geometry
    maps = low_rank_maps(40, h, w) if kind == "low_rank" else adversarial_maps(kind, c=40, h=h, w=w)
    for t, flags in ((torch.tensor([3, 39]), (True, True)), (None, (True, False)), (None, (False, True))):
        full = op(maps, list(size), "bilinear", False, t, runner_up=flags[0], weakest=flags[1], prune=0)
        got = op(maps, list(size), "bilinear", False, t, runner_up=flags[0], weakest=flags[1], prune=2)
        for a, b in zip(got, full):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("geometry", GEOMETRIES + [((7, 7), (224, 224))], ids=str)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("c", [3, 40, 300])
def test_dense_rows_and_pruned_cells_agree(geometry, align_corners, c):
    """The CPU kernel's two ways (dense rows: prune=0; pruned cells: prune=2; auto: 1)
    give bit-identical results on random and on smooth maps."""
    (h, w), size = geometry
    g = torch.Generator().manual_seed(c)
    rough = torch.randn(2, c, h, w, generator=g)
    smooth = torch.relu(F.avg_pool2d(torch.randn(2, c, h + 2, w + 2, generator=g), 3, 1))
    t = torch.tensor([0, c - 1])
    for maps in (rough, smooth):
        dense = op(maps, list(size), "bilinear", align_corners, t, prune=0)
        for prune in (1, 2):
            got = op(maps, list(size), "bilinear", align_corners, t, prune=prune)
            for a, b in zip(got, dense):
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def low_rank_maps(c, h, w, n=2, k=16, seed=3):
    """Class maps W . F of ReLU features (k channels): most classes are beaten in a
    cell by its few strong ones, as with a trained head; the champion tests prune
    them."""
    g = torch.Generator().manual_seed(seed)
    features = torch.relu(F.avg_pool2d(torch.randn(n, k, h + 2, w + 2, generator=g), 3, 1))
    return torch.einsum("nkhw,ck->nchw", features, torch.randn(c, k, generator=g)) + 0.1 * torch.randn(
        1, c, 1, 1, generator=g)


MAP_LAYOUTS = ["contiguous", "channels_last", "class_major", "sliced"]


def layout_of(maps, layout):
    """The same maps in another memory layout: channels-last, class-major ((C, N, h, w)
    memory, as project_dominance's GEMM leaves them), or a slice of a wider tensor."""
    if layout == "channels_last":
        return maps.contiguous(memory_format=torch.channels_last)
    if layout == "class_major":
        return maps.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "sliced":
        wide = torch.full((maps.shape[0], maps.shape[1] + 1, maps.shape[2], 2 * maps.shape[3]), float("nan"))
        wide[:, 1:, :, ::2] = maps
        return wide[:, 1:, :, ::2]
    return maps


@pytest.mark.parametrize("layout", MAP_LAYOUTS[1:])
@pytest.mark.parametrize("mode,align_corners,prune", [("bilinear", False, 0), ("bilinear", False, 2),
                                                      ("bilinear", True, 1), ("nearest", False, 1)])
def test_map_layouts_read_in_place(layout, mode, align_corners, prune):
    """The CPU kernel reads the maps in any layout: results equal the contiguous maps'."""
    maps = low_rank_maps(45, 5, 6)
    t = torch.tensor([0, 44])
    want = op(maps, [23, 31], mode, align_corners, t, prune=prune)
    got = op(layout_of(maps, layout), [23, 31], mode, align_corners, t, prune=prune)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("flags", [(True, True), (True, False), (False, True), (False, False)], ids=str)
@pytest.mark.parametrize("geometry", [((7, 7), (224, 224)), ((1, 2), (5, 150)), ((3, 4), (37, 70)),
                                      ((2, 2), (3, 2))], ids=str)
@pytest.mark.parametrize("c", [3, 40, 300])
def test_champion_pruning_is_exact(c, geometry, flags):
    """The pruned cells (interval and champion tests, survivors interpolated once per
    cell, 16 / 8 pixels and a scalar tail per step, cells wider than one column chunk)
    equal every class at every pixel, bit for bit: with and without a target, from an
    empty and from a streamed state, class-major maps."""
    (h, w), size = geometry
    maps = low_rank_maps(c, h, w)
    ru, wk = flags
    for t in (torch.tensor([c - 1, 0]), None):
        full = op(maps, list(size), "bilinear", False, t, runner_up=ru, weakest=wk, prune=0)
        got = op(layout_of(maps, "class_major"), list(size), "bilinear", False, t, runner_up=ru, weakest=wk,
                 prune=2)
        for a, b in zip(got, full):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    split = max(1, c // 3)
    v, i = op(maps[:, :split].contiguous(), list(size), "bilinear", False, None, runner_up=ru, weakest=wk, prune=2)
    got = op(maps[:, split:].contiguous(), list(size), "bilinear", False, None, v, i, split, True, ru, wk, 2)
    full = op(maps, list(size), "bilinear", False, None, runner_up=ru, weakest=wk, prune=0)
    for a, b in zip(got, full):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("kind", ["low_rank", "specials", "near_ties", "zeros"])
def test_in_order_update_equals_the_general_one(kind):
    """Pruned cells in order (ordered=True: the fast update once two survivors fill
    the slots) against the general, order-independent update (ordered=False), bit for
    bit: signed zeros, ties and NaN included."""
    if kind == "low_rank":
        maps = low_rank_maps(40, 7, 7)
    elif kind == "zeros":  # +-0 and a few ones: ties and signed zeros after interpolation
        g = torch.Generator().manual_seed(2)
        maps = torch.randint(0, 2, (2, 40, 7, 7), generator=g).float() * (torch.rand(2, 40, 7, 7, generator=g) < 0.1)
        # Mostly -0 corners, so that interpolated zeros of both signs compete.
        maps = torch.where((maps == 0) & (torch.rand(2, 40, 7, 7, generator=g) < 0.9), -0.0, maps)
    else:
        maps = adversarial_maps(kind, c=40, h=7, w=7)
    t = torch.tensor([0, 39])
    # Without a state a call counts as ordered: an all-empty state forces the general update.
    empty_v = torch.full((4, 2, 56, 45), float("nan"))
    empty_i = torch.full((3, 2, 56, 45), -1, dtype=torch.int64)
    for flags in ((True, True), (True, False), (False, True), (False, False)):
        fast = op(maps, [56, 45], "bilinear", False, t, None, None, 0, True, *flags, 2)
        general = op(maps, [56, 45], "bilinear", False, t, empty_v, empty_i, 0, False, *flags, 2)
        assert torch.equal(fast[0].view(torch.int32), general[0].view(torch.int32))
        assert torch.equal(fast[1], general[1])


def test_real_head_matches_reference():
    """A head with classes that share features (W . F of ReLU features, 300 classes)
    through project_dominance's one-GEMM path (class-major maps read in place)."""
    g = torch.Generator().manual_seed(4)
    features = torch.relu(F.avg_pool2d(torch.randn(3, 256, 9, 9, generator=g), 3, 1))
    weight, bias = torch.randn(300, 256, generator=g) / 16, 0.1 * torch.randn(300, generator=g)
    check(features, weight, bias, (56, 61), target=torch.tensor([0, 299, 150]))


@pytest.mark.parametrize("class_chunk", [None, 70])
def test_large_head_single_gemm(class_chunk):
    """Heads with C*K >= 65536 take one (C, K) x (K, N*h*w) product (and its permute)."""
    features = torch.relu(torch.randn(3, 256, 7, 6))
    weight, bias = torch.randn(300, 256) / 16, torch.randn(300)
    check(features, weight, bias, (64, 53), target=torch.tensor([0, 299, 5]), class_chunk=class_chunk)


def test_constant_maps_tie_to_lowest_class():
    d = clear_native.project_dominance(torch.ones(1, 3, 4, 4), torch.ones(5, 3), size=(16, 16))
    assert (d.dominant_class == 0).all() and (d.runner_up_class == 1).all() and (d.weakest_class == 0).all()


@pytest.mark.parametrize("chunk", [1, 3, 7])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_streaming_chunks_equal_one_call(chunk, mode):
    maps = adversarial_maps("ramps", c=10)
    t = torch.tensor([4, 9])
    whole = op(maps, [17, 19], mode, False, t)
    v = i = None
    for s in range(0, 10, chunk):
        v, i = op(maps[:, s:s + chunk], [17, 19], mode, False, t, v, i, s, True)
    torch.testing.assert_close(v, whole[0], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(i, whole[1])


def test_class_chunk_argument():
    features = torch.relu(torch.randn(2, 8, 5, 5))
    weight, bias = torch.randn(30, 8), torch.randn(30)
    a = clear_native.project_dominance(features, weight, bias, size=(20, 20), class_chunk=7)
    b = clear_native.project_dominance(features, weight, bias, size=(20, 20))
    assert (a.dominant_class == b.dominant_class).float().mean() > 0.999
    torch.testing.assert_close(a.dominant_response, b.dominant_response, rtol=1e-5, atol=1e-5)
    assert a.num_classes == 30


def test_never_materialises_the_full_tensor():
    # (1, 20000, 512, 512) float32 would be 20 GB; the fused operator needs
    # only the (1, 20000, 2, 2) low-resolution maps.
    features = torch.randn(1, 4, 2, 2)
    weight = torch.randn(20000, 4)
    d = clear_native.project_dominance(features, weight, size=(512, 512))
    corner = reference.class_maps(features, weight)[0, :, 0, 0]
    assert d.dominant_class[0, 0, 0] == corner.argmax()


def test_bad_input_messages():
    f, w = torch.randn(2, 8, 5, 5), torch.randn(10, 8)
    with pytest.raises(ValueError, match=r"weight has K=7 input features but features have K=8"):
        clear_native.project_dominance(f, torch.randn(10, 7), size=(8, 8))
    with pytest.raises(ValueError, match="size must be positive"):
        clear_native.project_dominance(f, w, size=(0, 8))
    with pytest.raises(ValueError, match="size must be an int or a pair"):
        clear_native.project_dominance(f, w, size=(8, 8, 8))
    with pytest.raises(TypeError, match="features must be a floating tensor, got torch.int64"):
        clear_native.project_dominance(torch.ones(2, 8, 5, 5, dtype=torch.int64), w, size=8)
    with pytest.raises(ValueError, match=r"features must be \(N, K, h, w\)"):
        clear_native.project_dominance(torch.randn(8, 5, 5), w, size=8)
    with pytest.raises(ValueError, match="weight is on meta but features are on cpu"):
        clear_native.project_dominance(f, w.to("meta"), size=8)
    with pytest.raises(ValueError, match=r"bias must be \(C,\) = \(10,\)"):
        clear_native.project_dominance(f, w, torch.randn(9), size=8)
    with pytest.raises(ValueError, match="mode must be one of"):
        clear_native.project_dominance(f, w, size=8, mode="bicubic")
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 10\)"):
        clear_native.project_dominance(f, w, size=8, target=torch.tensor([0, 10]))
    with pytest.raises(RuntimeError, match="maps must be float32 or float64"):
        op(torch.randn(1, 2, 3, 3).half(), [4, 4])


@pytest.mark.parametrize("bad", ["target", "state_values", "state_indices"])
def test_operator_refuses_an_argument_on_another_device(bad):
    maps, t = torch.randn(2, 3, 4, 5), torch.tensor([0, 2])
    v, i = op(maps, [8, 9], "bilinear", False, t)
    args = {"target": t, "state_values": v, "state_indices": i}
    args[bad] = args[bad].to("meta")
    call = (maps, [8, 9], "bilinear", False, *args.values(), 3, True)
    msg = rf"upsample_dominance: {bad} must be on the device of maps \(cpu\), got meta"
    with pytest.raises(RuntimeError, match=msg):   # the fake kernel (the dispatcher's choice)
        op(*call)
    with pytest.raises(RuntimeError, match=msg):   # the C++ front end of the CPU kernel
        op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *call, True, True, 1)
    # All inputs on meta (tracing) still work.
    m = maps.to("meta")
    v, i = op(m, [8, 9], "bilinear", False, t.to("meta"))
    assert v.device.type == "meta" and v.shape == (4, 2, 8, 9) and i.shape == (3, 2, 8, 9)


def test_result_streams_into_dominance_with_checks():
    # A project_dominance result is a state for clear_native.dominance over further
    # classes: it records that it holds classes [0, C) and its flags.
    features, weight = torch.relu(torch.randn(2, 8, 5, 5)), torch.randn(6, 8)
    d = clear_native.project_dominance(features, weight, size=(10, 10))
    extra = torch.randn(2, 2, 10, 10)
    with pytest.raises(ValueError, match=r"classes \[5, 7\) overlap classes \[0, 6\) already merged"):
        clear_native.dominance(extra, state=d, class_offset=5)
    with pytest.raises(ValueError, match="runner_up=False, weakest=True but the state was computed with "
                                         "runner_up=True"):
        clear_native.dominance(extra, state=d, class_offset=6, runner_up=False)
    e = clear_native.dominance(extra, state=d, class_offset=6)
    maps = torch.cat([upsampled(features, weight, None, (10, 10), "bilinear", False).float(), extra], 1)
    want = reference.dominance(maps)
    assert e.num_classes == 8 and e.state_record.ranges == ((0, 8),)
    assert (e.dominant_class == want.dominant_class).float().mean() > 0.999
    torch.testing.assert_close(e.dominant_response, want.dominant_response, rtol=1e-5, atol=1e-5)


def test_opcheck():
    maps = torch.randn(2, 6, 4, 5)
    t = torch.tensor([1, 4])
    torch.library.opcheck(op, (maps, [9, 11], "bilinear", False, t))
    torch.library.opcheck(op, (maps, [9, 11], "bilinear", True, t))
    torch.library.opcheck(op, (maps, [9, 11], "nearest", False, t))
    v, i = op(maps[:, :3], [9, 11], "bilinear", False, t)
    torch.library.opcheck(op, (maps[:, 3:], [9, 11], "bilinear", False, t, v, i, 3, True))


def test_torch_compile_fullgraph():
    def f(features, weight, bias, t):
        d = clear_native.project_dominance(features, weight, bias, size=(28, 28), target=t)
        return d.dominant_class, d.dominant_response, d.rival_class

    args = (torch.randn(2, 8, 7, 7), torch.randn(10, 8), torch.randn(10), torch.tensor([1, 2]))
    compiled = torch.compile(f, fullgraph=True)
    for got, want in zip(compiled(*args), f(*args)):
        torch.testing.assert_close(got, want)


def _kernel_cases():
    g = torch.Generator().manual_seed(5)
    out = []
    for c, (h, w), size in [(10, (7, 7), [28, 28]), (40, (5, 6), [13, 29]), (300, (3, 3), [40, 37])]:
        maps = torch.relu(torch.randn(2, c, h, w, generator=g))
        for mode, ac in (("bilinear", False), ("bilinear", True), ("nearest", False)):
            for prune in (0, 2):
                out.append(op(maps, size, mode, ac, torch.tensor([1, c - 1]), prune=prune))
    # The pruned cells' champion tests, wide cells, class-major maps, a state.
    for (h, w), size in [((7, 7), [224, 224]), ((1, 2), [5, 150])]:
        maps = low_rank_maps(200, h, w)
        t = torch.tensor([3, 199])
        for layout in MAP_LAYOUTS:
            out.append(op(layout_of(maps, layout), size, "bilinear", False, t, prune=2))
        v, i = op(maps[:, :50].contiguous(), size, "bilinear", False, t, prune=2)
        out.append(op(maps[:, 50:].contiguous(), size, "bilinear", False, t, v, i, 50, True, prune=2))
    return out


@pytest.mark.parametrize("body", LOWER_CPU_BODIES)
def test_baseline_simd_build_is_bit_identical(tmp_path, body):
    """The scalar CPU body (and the AVX2 one on an AVX-512 machine) gives the active
    body's results bit for bit (no FMA contraction anywhere: the same IEEE operations
    in the same order, 1, 8 or 16 lanes at a time)."""
    path = tmp_path / "baseline.pt"
    code = (
        "import torch, clear_native, test_project\n"
        f"assert clear_native.build_info()['cpu_capability'] == {body!r}\n"
        f"torch.save(test_project._kernel_cases(), {str(path)!r})\n"
        "print('ok')\n")
    run_with_baseline_cpu_build(code, body)
    for (v, i), (bv, bi) in zip(_kernel_cases(), torch.load(path)):
        assert torch.equal(v.view(torch.int32), bv.view(torch.int32))  # bits: signed zeros, NaN
        assert torch.equal(i, bi)
