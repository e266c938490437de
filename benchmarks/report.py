"""Runs the benchmarks and prints the README's table (markdown).

    python benchmarks/report.py [pytest args...]      e.g. -k dominance

Every group times the native operator and the plain-PyTorch reference on the
same inputs in the same run; the table gives medians, the speed-up, peak
memory, and, where torch.sum over the same tensor was timed, read bandwidth.
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


def format_table(data: dict) -> str:
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["impl"]] = b
    machine = data.get("machine_info", {})
    lines = [f"CPU: {machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"{machine.get('cpu', {}).get('count', '?')} logical cores",
             "",
             "| case | native median | reference median | speed-up | native peak MiB | "
             "reference peak MiB | native GB/s (torch.sum GB/s) |",
             "|---|---|---|---|---|---|---|"]
    for group, impls in sorted(groups.items()):
        if "interleaved" in impls:  # rounds alternate the two ways: per-round ratios
            info = impls["interleaved"]["extra_info"]
            med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
            lines.append(f"| {group} | {med(info['clear_native_s']) * 1e3:.1f} ms | "
                         f"{med(info['captum_per_class_s']) * 1e3:.1f} ms | "
                         f"{info['median_speedup']:.1f}x (median of per-round ratios) |  |  |  |")
            continue
        nat = impls.get("native") or impls.get("clear_native") or impls.get("clear_native_cam")
        ref = impls.get("reference") or impls.get("captum_per_class")
        if nat is None:
            continue
        t_nat = nat["stats"]["median"]
        t_ref = ref["stats"]["median"] if ref else float("nan")
        bw = ""
        if "torch_sum" in impls and "bytes_read" in nat["extra_info"]:
            nbytes = nat["extra_info"]["bytes_read"]
            t_sum = impls["torch_sum"]["stats"]["median"]
            bw = f"{nbytes / t_nat / 1e9:.1f} ({nbytes / t_sum / 1e9:.1f}; {t_sum / t_nat:.0%})"
        lines.append(
            f"| {group} | {t_nat * 1e3:.1f} ms | {t_ref * 1e3:.1f} ms | {t_ref / t_nat:.1f}x | "
            f"{nat['extra_info'].get('peak_memory_mib', float('nan')):.0f} | "
            f"{ref['extra_info'].get('peak_memory_mib', float('nan')) if ref else float('nan'):.0f} | {bw} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
