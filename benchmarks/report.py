"""Runs the benchmarks and prints the table of docs/performance.md (markdown).

    python benchmarks/report.py [pytest args...]      e.g. -k dominance

Every group times the native operator, the plain-PyTorch reference
(clear_native.reference) and, for dominance / project_dominance, the fastest
plain-PyTorch formulation (benchmarks/baselines.py) on the same inputs in the same
run; the table gives medians, both speed-ups, peak memory, and the roofline: the
fraction of torch.sum's read bandwidth over the same tensor (dominance) or the
ratio to the class-map GEMM (project_dominance), also per round with the
yardstick timed right before each native call.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pytest", here, "--benchmark-only", "-q",
               f"--benchmark-json={out}", "-p", "no:cacheprovider", *argv]
        rc = subprocess.call(cmd, cwd=here)
        if rc not in (0, 5) or not os.path.exists(out):
            return rc or 1
        with open(out) as f:
            data = json.load(f)
    print(format_table(data))
    return 0


def _median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")


def _range(v, fmt):
    v = sorted(v)
    return f"{fmt(v[0])}-{fmt(v[-1])}" if v else ""


def roofline(impls: dict) -> str:
    """Native against its yardstick: torch.sum's read bandwidth (dominance) or the
    class-map GEMM (project_dominance), from the separate benchmarks' medians and from
    the rounds that time the yardstick right before each native call (median, range)."""
    nat = impls["native"]
    info = nat["extra_info"]
    t_nat = nat["stats"]["median"]
    per_round = [y / t for y, t in zip(info.get("yardstick_s", []), info.get("native_s", []))]
    if "torch_sum" in impls and "bytes_read" in info:
        t_sum = impls["torch_sum"]["stats"]["median"]
        nbytes = info["bytes_read"]
        out = (f"{nbytes / t_nat / 1e9:.1f} GB/s = {t_sum / t_nat:.0%} of torch.sum "
               f"({nbytes / t_sum / 1e9:.1f} GB/s)")
        if per_round:
            out += f"; interleaved rounds {_median(per_round):.0%} ({_range(per_round, lambda r: f'{r:.0%}')})"
        return out
    if "gemm" in impls:
        t_gemm = impls["gemm"]["stats"]["median"]
        out = f"{t_nat / t_gemm:.2f}x its GEMM ({t_gemm * 1e3:.2f} ms)"
        if per_round:
            inv = [1 / r for r in per_round]
            out += f"; interleaved rounds {_median(inv):.2f}x ({_range(inv, lambda r: f'{r:.2f}')})"
        return out
    return ""


def format_table(data: dict) -> str:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["impl"]] = b
    machine = data.get("machine_info", {})
    ms = lambda t: (f"{t * 1e3:.1f} ms" if t >= 0.01 else f"{t * 1e3:.2f} ms") if t == t else ""  # noqa: E731
    x = lambda a, b: f"{a / b:.1f}x" if a == a and b == b else ""  # noqa: E731
    mib = lambda b: f"{b['extra_info'].get('peak_memory_mib', float('nan')):.0f}" if b else "-"  # noqa: E731
    lines = [f"CPU: {machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"{machine.get('cpu', {}).get('count', '?')} logical cores",
             "",
             "| case | native median | reference median | speed-up vs reference | plain-PyTorch median "
             "| speed-up vs plain | peak MiB native / reference / plain | roofline |",
             "|---|---|---|---|---|---|---|---|"]
    for group, impls in sorted(groups.items()):
        if "interleaved" in impls:  # rounds alternate the two ways: per-round ratios
            info = impls["interleaved"]["extra_info"]
            peer = info.get("captum_per_class_s") or info.get("zennit_per_class_s")
            lines.append(f"| {group} | {_median(info['clear_native_s']) * 1e3:.1f} ms | "
                         f"{_median(peer) * 1e3:.1f} ms | "
                         f"{info['median_speedup']:.1f}x (median of per-round ratios) |  |  |  |  |")
            continue
        nat = impls.get("native") or impls.get("clear_native") or impls.get("clear_native_cam")
        ref = impls.get("reference") or impls.get("captum_per_class") or impls.get("zennit_per_class")
        plain = impls.get("plain")
        if nat is None:
            continue
        t_nat = nat["stats"]["median"]
        t_ref = ref["stats"]["median"] if ref else float("nan")
        t_plain = plain["stats"]["median"] if plain else float("nan")
        lines.append(
            f"| {group} | {ms(t_nat)} | {ms(t_ref)} | {x(t_ref, t_nat)} | {ms(t_plain)} | "
            f"{x(t_plain, t_nat)} | {mib(nat)} / {mib(ref)} / {mib(plain)} | "
            f"{roofline(impls) if 'native' in impls else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
