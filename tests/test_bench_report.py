"""bench/report.py: the README's benchmark tables are generated from the committed CPU record, and the report handles
any implementation names (one ratio column per baseline, each named)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report

ROOT = Path(__file__).resolve().parents[1]


def _bench(op, impl, median, *, mode="fwd", shape=(64, 128, 128), note=None, **extra):
    info = {"op": op, "impl": impl, "mode": mode, "device": "cpu", "dtype": "float32", "shape": list(shape), **extra}
    if note:
        info["impl_note"] = note
    return {"extra_info": info, "stats": {"median": median}}


def _write(tmp_path, benches) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    return path


def test_readme_tables_equal_the_committed_cpu_record():
    readme = (ROOT / "README.md").read_text()
    rows = report.load([ROOT / "bench" / "results" / "cpu" / "bench.json"])
    assert rows, "the committed CPU record has no timed case"
    assert report.replace_block(readme, report.tables(rows)) == readme, (
        "README's benchmark tables are stale: run `make bench-record-cpu` (or bench/report.py ... --readme README.md)")


def test_ratio_column_per_baseline_with_arbitrary_names(tmp_path):
    path = _write(tmp_path, [
        _bench("binary_concrete[relaxed]", "fused", 0.010, GBps=2.0),
        _bench("binary_concrete[relaxed]", "naive_torch", 0.030),
        _bench("binary_concrete[relaxed]", "relaxed_bernoulli", 0.025, note="RelaxedBernoulli(...).rsample()"),
        _bench("binary_concrete[relaxed]", "eager", 0.090),
        _bench("binary_concrete[relaxed]", "my_new_impl", 0.005),
    ])
    text = report.tables(report.load([path]))
    head, _, row = text.splitlines()[2:5]
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = dict(zip(cols, (c.strip() for c in row.strip("|").split("|"))))
    assert cols[3:8] == ["fused ms", "eager ms", "my_new_impl ms", "naive_torch ms", "relaxed_bernoulli ms"]
    assert cells["fused vs naive_torch"] == "3.00x"
    assert cells["fused vs relaxed_bernoulli"] == "2.50x"
    assert cells["fused vs eager"] == "9.00x"
    assert cells["fused vs my_new_impl"] == "0.50x"
    assert cells["fused throughput"] == "2 GB/s"
    assert "`relaxed_bernoulli`: RelaxedBernoulli(...).rsample()" in text  # the JSON's note wins
    assert "`naive_torch`: the naive torch expression" in text  # the built-in legend otherwise
    assert "`my_new_impl`: (no description recorded)" in text


def test_without_a_fused_timing_the_eager_reference_is_the_subject(tmp_path):
    path = _write(tmp_path, [
        _bench("supcon_loss", "eager", 0.002, shape=(256, 64)),
        _bench("supcon_loss", "pml", 0.004, shape=(256, 64)),
        _bench("supcon_loss", "eager", 0.003, shape=(256, 64), mode="bwd"),  # pml has no bwd row: "-"
        {"extra_info": {"op": "supcon_loss", "impl": "compile"}, "stats": None},  # --benchmark-disable: left out
    ])
    text = report.tables(report.load([path]))
    assert "no `fused` timing in this record" in text and "the ratios are `eager`'s" in text
    lines = [line for line in text.splitlines() if line.startswith("| 256x64")]
    assert [line.split("|")[3].strip() for line in lines] == ["fwd", "bwd"]  # modes in fwd, bwd, fwd+bwd order
    assert lines[0].split("|")[6].strip() == "2.00x" and lines[1].split("|")[6].strip() == "-"
    assert "compile ms" not in text


def test_older_records_with_provider_keys_still_load(tmp_path):
    bench = _bench("cond_norm", "fused", 0.001)
    bench["extra_info"]["provider"] = bench["extra_info"].pop("impl")
    assert report.load([_write(tmp_path, [bench])])[0]["impl"] == "fused"


def test_readme_rewrite_and_check(tmp_path, capsys):
    json_path = _write(tmp_path, [_bench("cond_norm", "fused", 0.001), _bench("cond_norm", "upstream", 0.002)])
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nold table\n{report.END}\noutro\n")
    assert report.main([str(json_path), "--readme", str(readme), "--check"]) == 1
    assert report.main([str(json_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{report.END}\noutro\n") and "old table" not in text
    assert "fused vs upstream" in text
    assert report.main([str(json_path), "--readme", str(readme), "--check"]) == 0
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:begin"):
        report.main([str(json_path), "--readme", str(readme)])


class _FakeBenchmark:
    """What time_op uses of pytest-benchmark's fixture, as under --benchmark-disable (one call, no stats)."""

    disabled = True
    stats = None

    def __init__(self):
        self.extra_info, self.calls = {}, 0

    def pedantic(self, fn, rounds, warmup_rounds, iterations):
        self.calls += 1
        fn()


def test_time_op_records_the_impl_keys_the_report_reads():
    import torch

    from bench.conftest import time_op

    bench = _FakeBenchmark()
    x = torch.randn(4, 3, requires_grad=True)
    time_op(bench, lambda t: (t * t).sum(), [x], "fwd+bwd", op="square", impl="naive_torch", impl_note="t * t",
            shape=x.shape)
    info = bench.extra_info
    assert bench.calls == 1
    assert (info["op"], info["impl"], info["provider"], info["mode"], info["impl_note"]) == (
        "square", "naive_torch", "naive_torch", "fwd+bwd", "t * t")
    assert info["shape"] == [4, 3] and info["dtype"] == "float32" and info["device"] == "cpu"
    old = _FakeBenchmark()
    time_op(old, lambda t: t.sum(), [x], "fwd", op="square", provider="eager", shape=x.shape)  # the older keyword
    assert old.extra_info["impl"] == "eager"
    with pytest.raises(ValueError, match="impl"):
        time_op(_FakeBenchmark(), lambda t: t.sum(), [x], "fwd", op="square", shape=x.shape)
