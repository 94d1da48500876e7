"""Markdown tables from pytest-benchmark JSON files (the README's benchmark tables are generated with this).

    python bench/report.py bench/results/<gpu>/*.json > table.md

One row per (op, shape, dtype, mode): the median time of each provider (fused kernel, eager reference,
torch.compile(reference)), the fused speed-ups over both, and the fused kernel's throughput and % of roofline.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if "op" not in info:
                continue
            rows.append({**info, "median_s": bench["stats"]["median"], "source": path.name,
                         "machine": data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "")})
    return rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{b / a:.2f}x"


def table(rows: list[dict]) -> str:
    groups: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        key = (r["op"], r["device"], tuple(r.get("shape", ())), r.get("dtype", "-"), r.get("mode", "-"))
        groups[key][r["provider"]] = r
    lines = [
        "| op | device | shape | dtype | mode | fused ms | eager ms | compile ms | vs eager | vs compile | fused "
        "throughput | % roofline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (op, device, shape, dtype, mode), by in sorted(groups.items()):
        fused, eager, comp = (by.get(p, {}).get("median_s") for p in ("fused", "eager", "compile"))
        f = by.get("fused", {})
        if "TFLOPs" in f:
            throughput = f"{f['TFLOPs']:.1f} TFLOP/s"
            roof = f.get("pct_peak_flops")
        elif "GBps" in f:
            throughput = f"{f['GBps']:.0f} GB/s"
            roof = f.get("pct_measured_bw", f.get("pct_peak_bw"))
        else:
            throughput, roof = "-", None
        lines.append(
            f"| {op} | {device} | {'x'.join(map(str, shape))} | {dtype} | {mode} | {_ms(fused)} | {_ms(eager)} | "
            f"{_ms(comp)} | {_ratio(fused, eager)} | {_ratio(fused, comp)} | {throughput} | "
            f"{'-' if roof is None else f'{roof:.0f}%'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json / autosave)")
    args = parser.parse_args()
    print(table(load(args.json)))


if __name__ == "__main__":
    main()
