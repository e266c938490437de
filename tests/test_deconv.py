"""unpool_deconv (one deconvnet layer) against the reference and against autograd."""
import pytest
import torch
import torch.nn.functional as F

from clear_native import reference
from clear_native._relu_rules import relu_rule
from clear_native.deconv import unpool_deconv
from conftest import DEVICES, HAS_CUDA, LOWER_CPU_BODIES, run_with_baseline_cpu_build

RULES = ["deconvnet", "guided", "gradient"]
# (C_in, C, H, W, kernel, stride, padding, dilation, pool kernel, pool stride, pool padding, ceil)
GEOMETRIES = [
    (32, 32, 28, 28, 3, 1, 1, 1, 2, 2, 0, False),   # the MNIST benchmark's blocks
    (3, 5, 17, 13, 5, 2, 2, 1, 2, 2, 0, False),     # odd sizes, strided conv
    (4, 6, 19, 19, 3, 1, 2, 2, 2, 2, 0, True),      # dilation, ceil_mode
    (1, 7, 9, 9, 1, 1, 0, 1, 3, 3, 1, False),       # 1x1 conv, 3x3 pool with padding
    (5, 1, 8, 11, (3, 1), (1, 2), (1, 0), 1, (2, 1), (2, 1), 0, False),  # rectangular, one channel
    (9, 16, 10, 10, 3, 1, 1, 1, (1, 2), (1, 2), 0, False),  # 1x2 pool windows
    # 3x3 kernels of the CPU fast path (8-channel blocks, weights in registers):
    (24, 7, 13, 11, 3, 1, 1, 1, 2, 2, 0, False),   # 3 blocks; 11 wide (overlapping 8x8 transposes); 30 signals (a tail)
    (16, 9, 6, 5, 3, 1, 2, 1, 2, 2, 0, True),      # 5 wide (scalar transpose), padding 2, ceil_mode
    (8, 4, 12, 12, 3, 2, 1, 2, 2, 2, 0, False),    # strided and dilated 3x3
]


def block(x, w, geo, rule):
    """conv -> ReLU -> max-pool with the rule's ReLU backward; returns (pooled, indices, x)."""
    _, _, _, _, _, s, p, d, pk, ps, pp, ceil = geo
    x = x.detach().clone().requires_grad_(True)
    with relu_rule(rule):
        y = F.relu(F.conv2d(x, w, stride=s, padding=p, dilation=d))
    pooled, idx = F.max_pool2d(y, pk, ps, pp, ceil_mode=ceil, return_indices=True)
    return pooled, idx, x


def case(geo, dtype=torch.float32, device="cpu", n=3):
    cin, c, h, w_, k, *_ = geo
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, cin, h, w_, dtype=dtype, device=device)
    w = torch.randn(c, cin, kh, kw, dtype=dtype, device=device)
    return x, w


def ours(g, idx, pooled, w, x, geo, rule, rectify=False):
    _, _, _, _, _, s, p, d, *_ = geo
    return unpool_deconv(g, idx, w, tuple(x.shape[-2:]), pooled=pooled, stride=s, padding=p,
                         dilation=d, rule=rule, rectify_output=rectify)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=str)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("rectify", [False, True])
def test_matches_reference_and_autograd(rectify, rule, geo, dtype, device):
    x, w = case(geo, dtype, device)
    pooled, idx, xg = block(x, w, geo, rule)
    g = torch.randn_like(pooled)
    (want,) = torch.autograd.grad(pooled, xg, g)
    if rectify:
        want = want.clamp(min=0)
    got = ours(g, idx, pooled.detach(), w, x, geo, rule, rectify)
    _, _, _, _, _, s, p, d, *_ = geo
    ref = reference.unpool_deconv(g, idx, w, tuple(x.shape[-2:]), pooled=pooled.detach(), stride=s,
                                  padding=p, dilation=d, rule=rule, rectify_output=rectify)
    assert got.shape == x.shape and got.dtype == dtype and got.is_contiguous()
    torch.testing.assert_close(ref, want)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("rule", RULES)
def test_strided_and_channels_last_inputs(rule):
    geo = GEOMETRIES[1]
    x, w = case(geo, n=4)
    pooled, idx, _ = block(x, w, geo, rule)
    g = torch.randn(pooled.shape[0], pooled.shape[1], pooled.shape[2] * 2, pooled.shape[3])[:, :, ::2]
    base = ours(g.contiguous(), idx, pooled.detach(), w, x, geo, rule)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    torch.testing.assert_close(ours(g, idx, pooled.detach(), w, x, geo, rule), base, rtol=0, atol=0)
    torch.testing.assert_close(ours(cl(g), cl(idx), cl(pooled.detach()), cl(w), x, geo, rule), base,
                               rtol=0, atol=0)
    wt = w.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous weight
    torch.testing.assert_close(ours(g, idx, pooled.detach(), wt, x, geo, rule), base, rtol=0, atol=0)


def test_ties_nan_and_zero_signals():
    """Tied window values (the switch is torch's choice), NaN and zero signals."""
    geo = GEOMETRIES[0]
    x, w = case(geo, n=2)
    x = x.round()  # many exact ties after the conv of integer images with ...
    w = w.round()  # ... integer weights
    for rule in RULES:
        pooled, idx, xg = block(x, w, geo, rule)
        g = torch.randn_like(pooled)
        g[0, :3] = float("nan")
        g[1, 4:9] = 0.0
        (want,) = torch.autograd.grad(pooled, xg, g)
        got = ours(g, idx, pooled.detach(), w, x, geo, rule)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert torch.isnan(got[0]).any() == (rule == "deconvnet" or bool((pooled[0, :3] > 0).any()))


def test_compaction_edge_cases():
    """Invalid switches, NaN, zero and all-zero signals in the 8-wide and in the tail part
    of the CPU kernel's signal gathering, narrow conv outputs (Wo < 3) and images with no
    signal at all, against the reference."""
    torch.manual_seed(3)
    cases = [(10, (12, 12), (3, 3), 1), (3, (9, 2), (3, 1), 0), (5, (1, 13), (1, 3), (0, 1))]
    for c_in, size, k, pad in cases:
        w = torch.randn(6, c_in, *k)
        x = torch.randn(4, c_in, *size)
        for rule in RULES:
            with relu_rule(rule):
                y = F.relu(F.conv2d(x, w, padding=pad))
            pooled, idx = F.max_pool2d(y, (min(2, y.shape[2]), 2), return_indices=True)
            g = torch.randn_like(pooled)
            g[0] = 0.0                       # an image without signal
            g[1, :2] = float("nan")
            g[2, ::2] = 0.0
            g[3].view(-1)[::3] = -0.0
            got = unpool_deconv(g, idx, w, size, pooled=pooled, padding=pad, rule=rule, rectify_output=True)
            want = reference.unpool_deconv(g, idx, w, size, pooled=pooled, padding=pad, rule=rule,
                                           rectify_output=True)
            torch.testing.assert_close(got, want, equal_nan=True)
            assert (got[0] == 0).all()
    # An invalid switch is reported wherever it sits (8-wide part, tail), unless its
    # signal is zero.
    w = torch.randn(4, 8, 3, 3)
    g = torch.rand(2, 4, 3, 3) + 0.5                # 9 positions: 8 wide + a tail of 1
    for pos in (0, 5, 8):
        idx = torch.zeros(2, 4, 3, 3, dtype=torch.int64)
        idx[1, 2].view(-1)[pos] = 36
        with pytest.raises(RuntimeError, match=r"indices must lie in \[0, 36\).*got 36"):
            unpool_deconv(g, idx, w, (6, 6), padding=1)
        g0 = g.clone()
        g0[1, 2].view(-1)[pos] = 0.0
        out = unpool_deconv(g0, idx, w, (6, 6), padding=1)
        idx[1, 2].view(-1)[pos] = 0
        torch.testing.assert_close(out, unpool_deconv(g0, idx, w, (6, 6), padding=1), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_degenerate_shapes(device):
    w = torch.randn(4, 3, 3, 3, device=device)
    for n, c, hp in [(0, 4, 3), (2, 4, 0)]:
        g = torch.randn(n, c, hp, hp, device=device)
        idx = torch.zeros(n, c, hp, hp, dtype=torch.int64, device=device)
        out = unpool_deconv(g, idx, w, (6, 6), padding=1)
        assert out.shape == (n, 3, 6, 6) and (out == 0).all()
    g = torch.randn(2, 0, 3, 3, device=device)
    out = unpool_deconv(g, g.long(), torch.randn(0, 3, 3, 3, device=device), (6, 6), padding=1)
    assert out.shape == (2, 3, 6, 6) and (out == 0).all()


def test_results_independent_of_threads():
    geo = GEOMETRIES[0]
    x, w = case(geo, n=1)  # one image: the work splits over input channels
    pooled, idx, _ = block(x, w, geo, "deconvnet")
    g = torch.randn_like(pooled)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ours(g, idx, None, w, x, geo, "deconvnet")
        torch.set_num_threads(4)
        many = ours(g, idx, None, w, x, geo, "deconvnet")
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, many, rtol=0, atol=0)


def _kernel_cases():
    torch.manual_seed(1)
    out = []
    for geo in GEOMETRIES:
        x, w = case(geo)
        for rule in RULES:
            pooled, idx, _ = block(x, w, geo, rule)
            g = torch.randn_like(pooled)
            out.append(ours(g, idx, pooled.detach(), w, x, geo, rule, rectify=rule == "guided"))
    return out


@pytest.mark.parametrize("body", LOWER_CPU_BODIES)
def test_baseline_simd_build_is_bit_identical(body):
    """The scalar CPU body (and the AVX2 one on AVX-512 CPUs) gives the active body's
    results bit for bit (multiply then add in both, same order)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/baseline.pt"
        run_with_baseline_cpu_build(
            "import torch, clear_native, test_deconv\n"
            f"assert clear_native.build_info()['cpu_capability'] == {body!r}\n"
            f"torch.save(test_deconv._kernel_cases(), {path!r})\n"
            "print('ok')\n", body)
        for a, b in zip(_kernel_cases(), torch.load(path)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of clear_native")
def test_cuda_matches_cpu():
    for geo in GEOMETRIES:
        x, w = case(geo)
        for rule in RULES:
            pooled, idx, _ = block(x, w, geo, rule)
            g = torch.randn_like(pooled)
            cpu = ours(g, idx, pooled.detach(), w, x, geo, rule, rule == "deconvnet")
            gpu = ours(g.cuda(), idx.cuda(), pooled.detach().cuda(), w.cuda(), x, geo, rule,
                       rule == "deconvnet")
            torch.testing.assert_close(gpu.cpu(), cpu)


def test_opcheck():
    geo = GEOMETRIES[1]
    x, w = case(geo)
    pooled, idx, _ = block(x, w, geo, "guided")
    g = torch.randn_like(pooled)
    torch.library.opcheck(torch.ops.clear_native.unpool_deconv,
                          (g, idx, pooled.detach(), w, [17, 13], [2, 2], [2, 2], [1, 1], 2, True))


def test_bad_inputs():
    g = torch.randn(2, 4, 3, 3)
    idx = torch.zeros(2, 4, 3, 3, dtype=torch.int64)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        unpool_deconv(g.half(), idx, w.half(), (6, 6))
    with pytest.raises(RuntimeError, match="indices must have grad's shape"):
        unpool_deconv(g, idx[:, :2], w, (6, 6))
    with pytest.raises(RuntimeError, match="indices must be int64"):
        unpool_deconv(g, idx.int(), w, (6, 6))
    with pytest.raises(RuntimeError, match=r"weight must be \(C, C_in, kh, kw\) with C = 4"):
        unpool_deconv(g, idx, w[:3], (6, 6))
    with pytest.raises(RuntimeError, match="weight must be Float like grad, got Double"):
        unpool_deconv(g, idx, w.double(), (6, 6))
    with pytest.raises(RuntimeError, match="need the pooled output"):
        unpool_deconv(g, idx, w, (6, 6), rule="guided")
    with pytest.raises(RuntimeError, match="pooled must have grad's shape"):
        unpool_deconv(g, idx, w, (6, 6), pooled=g[:1], rule="guided")
    with pytest.raises(RuntimeError, match=r"stride must be in \[1, 2\^31 - 1\]"):
        unpool_deconv(g, idx, w, (6, 6), stride=0)
    with pytest.raises(RuntimeError, match="has no output for input_size"):
        unpool_deconv(g, idx, w, (1, 1))
    with pytest.raises(RuntimeError, match=r"indices must lie in \[0, 36\).*got 36"):
        unpool_deconv(g, idx.fill_(36), w, (6, 6), padding=1)
    with pytest.raises(ValueError, match="rule must be one of"):
        unpool_deconv(g, idx, w, (6, 6), rule="relu")
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        unpool_deconv(g, idx, w, (6, 6), stride=(1, 2, 3))
    with pytest.raises(TypeError, match="grad must be a torch.Tensor"):
        unpool_deconv(g.numpy(), idx, w, (6, 6))


@pytest.mark.parametrize("bad", ["indices", "pooled", "weight"])
def test_inputs_on_another_device_are_refused(bad):
    # A meta weight among CPU inputs used to reach the fake kernel and return
    # uninitialised CPU memory.
    geo = GEOMETRIES[1]
    x, w = case(geo)
    pooled, idx, _ = block(x, w, geo, "guided")
    args = {"indices": idx, "pooled": pooled.detach(), "weight": w}
    args[bad] = args[bad].to("meta")
    g = torch.randn_like(pooled)
    with pytest.raises(ValueError, match=f"unpool_deconv: {bad} is on meta but grad is on cpu"):
        unpool_deconv(g, args["indices"], args["weight"], (17, 13), pooled=args["pooled"], stride=2,
                      padding=2, rule="guided")
    op = torch.ops.clear_native.unpool_deconv.default
    call = (g, args["indices"], args["pooled"], args["weight"], [17, 13], [2, 2], [2, 2], [1, 1], 2)
    msg = rf"unpool_deconv: {bad} must be on the device of grad \(cpu\), got meta"
    with pytest.raises(RuntimeError, match=msg):   # the fake kernel (the dispatcher's choice)
        op(*call)
    with pytest.raises(RuntimeError, match=msg):   # the C++ front end of the CPU kernel
        op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *call, False)
    # All inputs on meta (tracing) still work.
    out = op(*(a.to("meta") if isinstance(a, torch.Tensor) else a for a in call))
    assert out.device.type == "meta" and out.shape == (3, 3, 17, 13)
