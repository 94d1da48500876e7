"""Markdown tables from pytest-benchmark JSON files; the README's benchmark tables are generated with this.

    python bench/report.py bench/results/<gpu>/*.json                     # print the tables
    python bench/report.py bench/results/cpu/bench.json --readme README.md   # rewrite README's generated block
    python bench/report.py bench/results/cpu/bench.json --readme README.md --check   # fail if it is stale

One table per (device, op), one row per (shape, dtype, mode): the median time of every implementation found in the
JSON (``extra_info["impl"]``: ours -- ``fused``, ``eager`` reference, ``compile`` = torch.compile(reference) -- and
any baseline name), then one ratio column per other implementation, "<subject> vs <impl>" = that impl's time over
the subject's (> 1: the subject is faster), then the subject's throughput and % of roofline. The subject is the
fused kernel; where it was not timed (the Triton kernels on a CPU) it is the eager reference, and the table says so.
A legend under each table says what every implementation is (``impl_note`` from the JSON, else ``NOTES`` below).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
OURS = ("fused", "eager", "compile")
MODE_ORDER = {"fwd": 0, "bwd": 1, "fwd+bwd": 2, "step": 3}
# Legend for implementations whose JSON rows carry no impl_note.
NOTES = {
    "fused": "the dfkd_fast op on its default backend (the fused kernel)",
    "eager": "the project's plain-PyTorch reference (backend=\"reference\")",
    "compile": "torch.compile(reference)",
    "naive_torch": "the naive torch expression a user would write",
    "relaxed_bernoulli": "torch.distributions.RelaxedBernoulli(...).rsample(), symmetrised",
}


def load(paths: list[Path]) -> list[dict]:
    """One dict per timed case (cases without a median, e.g. from --benchmark-disable, are left out)."""
    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            impl = info.get("impl", info.get("provider"))
            median = (bench.get("stats") or {}).get("median")
            if "op" not in info or impl is None or not median:
                continue
            rows.append({**info, "impl": impl, "median_s": median, "source": Path(path).name})
    return rows


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.4g}"


def _ratio(subject: float | None, other: float | None) -> str:
    return "-" if subject is None or other is None else f"{other / subject:.2f}x"


def _impl_order(impls: set[str]) -> list[str]:
    return [i for i in OURS if i in impls] + sorted(impls - set(OURS))


def _throughput(row: dict | None) -> tuple[str, str]:
    if not row:
        return "-", "-"
    if "TFLOPs" in row:
        text, roof = f"{row['TFLOPs']:.3g} TFLOP/s", row.get("pct_peak_flops")
    elif "GBps" in row:
        text, roof = f"{row['GBps']:.3g} GB/s", row.get("pct_measured_bw", row.get("pct_peak_bw"))
    else:
        return "-", "-"
    return text, "-" if roof is None else f"{roof:.0f}%"


def _row_key(key: tuple) -> tuple:
    shape, dtype, mode = key
    return tuple(shape), str(dtype), MODE_ORDER.get(mode, 9), str(mode)


def op_table(op: str, device: str, rows: list[dict]) -> str:
    """The markdown block of one op on one device."""
    impls = _impl_order({r["impl"] for r in rows})
    subject = "fused" if "fused" in impls else "eager" if "eager" in impls else impls[0]
    others = [i for i in impls if i != subject]
    cells: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        cells[(tuple(r.get("shape", ())), r.get("dtype") or "-", r.get("mode", "-"))][r["impl"]] = r
    head = ["shape", "dtype", "mode", *(f"{i} ms" for i in impls), *(f"{subject} vs {i}" for i in others),
            f"{subject} throughput", "% roofline"]
    caveat = "" if subject == "fused" or not others else (" (no `fused` timing in this record: the Triton kernels "
                                                          f"are timed on a GPU only; the ratios are `{subject}`'s)")
    lines = [f"**{op}** on {device}{caveat}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(cells, key=_row_key):
        by = cells[key]
        times = {i: by[i]["median_s"] if i in by else None for i in impls}
        shape, dtype, mode = key
        lines.append("| " + " | ".join([
            "x".join(map(str, shape)) or "-", str(dtype), str(mode), *(_ms(times[i]) for i in impls),
            *(_ratio(times[subject], times[i]) for i in others), *_throughput(by.get(subject)),
        ]) + " |")
    notes = {}
    for r in rows:
        notes.setdefault(r["impl"], r.get("impl_note") or NOTES.get(r["impl"], "(no description recorded)"))
    lines += ["", "; ".join(f"`{i}`: {notes[i]}" for i in impls) + "."]
    return "\n".join(lines)


def tables(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r.get("device", "-"), r["op"])].append(r)
    return "\n\n".join(op_table(op, device, group) for (device, op), group in sorted(groups.items()))


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the BEGIN and END markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"report: the README has no {BEGIN} ... {END} block")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json / autosave)")
    parser.add_argument("--readme", type=Path, help=f"rewrite the block between {BEGIN} and {END} of this file")
    parser.add_argument("--check", action="store_true", help="with --readme: exit 1 if the block is stale")
    args = parser.parse_args(argv)
    rows = load(args.json)
    if not rows:
        parser.error("no timed benchmark cases in " + ", ".join(map(str, args.json)))
    block = tables(rows)
    if args.readme is None:
        print(block)
        return 0
    old = args.readme.read_text()
    new = replace_block(old, block)
    if args.check:
        if new != old:
            print(f"{args.readme}: the generated benchmark block is stale; run bench/report.py ... --readme",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
