"""Every integer argument of the native operators, fuzzed over huge and negative values: each
call returns or raises a RuntimeError whose message names the argument, never crashes the
process, overflows silently, or carries the build machine's source path."""
import json
import subprocess
import sys
import textwrap

# Values a caller might pass by mistake; sizes that would allocate gigabytes if accepted
# (2^31 - 1 for a size) are left out: the checks below bound the arithmetic, not the memory.
VALUES = [-2 ** 63, -2 ** 40, -1, 0, 1, 2, 2 ** 20, 2 ** 31, 2 ** 40, 2 ** 61, 2 ** 63 - 1]

SCRIPT = textwrap.dedent("""
    import json, sys, torch, clear_native
    op = torch.ops.clear_native
    values = json.loads(sys.argv[1])
    g = torch.randn(1, 2, 3, 3); idx = torch.zeros(1, 2, 3, 3, dtype=torch.long); w = torch.randn(2, 1, 3, 3)
    r = torch.randn(1, 3, 4, 4); m = torch.randn(1, 3, 2, 2)
    calls = {
        "unpool_deconv input_size": lambda v: op.unpool_deconv(g, idx, None, w, [v, 6]),
        "unpool_deconv stride": lambda v: op.unpool_deconv(g, idx, None, w, [6, 6], [v, 1]),
        "unpool_deconv padding": lambda v: op.unpool_deconv(g, idx, None, w, [6, 6], [1, 1], [v, 0]),
        "unpool_deconv padding both": lambda v: op.unpool_deconv(g, idx, None, w, [6, 6], [1, 1], [v, v]),
        "unpool_deconv dilation": lambda v: op.unpool_deconv(g, idx, None, w, [6, 6], [1, 1], [0, 0], [v, 1]),
        "unpool_deconv rule": lambda v: op.unpool_deconv(g, idx, None, w, [6, 6], rule=v),
        "dominance class_offset": lambda v: op.dominance(r, class_offset=v),
        "upsample_dominance size": lambda v: op.upsample_dominance(m, [v, 4]),
        "upsample_dominance class_offset": lambda v: op.upsample_dominance(m, [4, 4], class_offset=v),
        "upsample_dominance prune": lambda v: op.upsample_dominance(m, [4, 4], prune=v),
    }
    out = []
    for name, call in calls.items():
        for v in values:
            try:
                res = call(v)
                shape = list((res[0] if isinstance(res, (tuple, list)) else res).shape)
                out.append([name, v, "ok", shape])
            except RuntimeError as e:
                out.append([name, v, "error", str(e).splitlines()[0]])
    print(json.dumps(out))
""")


def test_integer_arguments_never_crash_or_overflow(tmp_path):
    # In a subprocess, so that a crash fails the test instead of ending the run; from another
    # folder, so that a source checkout does not shadow the installed package.
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(VALUES)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a crash (segfault, abort) fails here
    rows = json.loads(proc.stdout.splitlines()[-1])
    assert len(rows) == 10 * len(VALUES)
    for name, v, status, info in rows:
        arg = name.split()[1]  # "padding both": the padded plane (2 v + 6)^2 must fit the accumulator
        if status == "error":
            assert "csrc/" not in info and ".cpp:" not in info, (name, v, info)  # no source path
            continue
        # accepted: only values that make sense, with outputs of the size they ask for
        if arg in ("class_offset",):
            assert 0 <= v < 2 ** 31, (name, v)
        elif arg in ("input_size", "padding"):
            assert 0 <= v <= 2 ** 31, (name, v)
            if arg == "input_size":
                assert info == [1, 1, v, 6], (name, v, info)
        elif arg in ("stride", "dilation"):
            assert 1 <= v < 2 ** 31, (name, v)
        elif arg == "size":
            assert 1 <= v < 2 ** 31 and info[-2:] == [v, 4], (name, v, info)
        elif arg == "rule":
            assert v == 1, (name, v)  # deconvnet: the others need pooled
        elif arg == "prune":
            assert v in (0, 1, 2), (name, v)
    errors = {(n, v): i for n, v, s, i in rows if s == "error"}
    assert "padding must be in [0, 2^31 - 1]" in errors[("unpool_deconv padding", 2 ** 61)]
    assert "too large for the kernel's accumulator" in errors[("unpool_deconv padding both", 2 ** 20)]
    ok = {(n, v): i for n, v, s, i in rows if s == "ok"}
    assert ok[("unpool_deconv padding", 2 ** 20)] == [1, 1, 6, 6]  # a tall padded plane, still small
    assert "class indices must fit in int32" in errors[("dominance class_offset", 2 ** 63 - 1)]
    assert "size must be two ints in [1, 2^31 - 1]" in errors[("upsample_dominance size", 2 ** 40)]
