"""Smoke test of examples/acgkd_tu.py: tiny budgets on MUTAG, per-cell cache, resume, tables from the cache."""

import json
import os

from helpers import load_example


def test_study_smoke_caches_resumes_and_writes_the_tables(shared_data, tmp_path, capsys):
    study = load_example("acgkd_tu")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- study:begin -->\nold table\n<!-- study:end -->\noutro\n")
    argv = ["--data-root", os.path.join(shared_data, "TU"), "--datasets", "MUTAG", "--students", "gin-3-32",
            "--seeds", "1", "--quick", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--table", str(tmp_path / "table.md"), "--readme", str(readme)]
    assert study.main(argv) == 0
    cells = sorted(p.name for p in (tmp_path / "cache" / "MUTAG").glob("*-seed0.json"))
    assert cells == ["acgkd-gin-3-32-seed0.json", "gfkd-gin-3-32-seed0.json", "real-gin-3-32-seed0.json"]
    cell = json.loads((tmp_path / "cache" / "MUTAG" / "acgkd-gin-3-32-seed0.json").read_text())
    assert {"last", "selected", "best", "selected_epoch", "gen_s"} <= set(cell)
    assert cell["best"] >= cell["selected"] and cell["best"] >= cell["last"]
    body = readme.read_text()
    assert body.startswith("intro\n<!-- study:begin -->\n") and body.endswith("<!-- study:end -->\noutro\n")
    assert "old table" not in body and "| MUTAG |" in body and "gin-3-32 | ACGKD | 1 |" in body
    assert "Missing on MUTAG: gcn-3-32 ACGKD seeds 0, 1, 2, 3, 4;" in body  # the table says what it lacks
    assert "gin-3-32 ACGKD seeds 1, 2, 3, 4" in body and "Not run yet: PROTEINS." in body
    # a rerun finds every cell cached and only rewrites the tables
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.json")}
    capsys.readouterr()
    assert study.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.json")} == stamps
    assert "MUTAG seed 0 " not in capsys.readouterr().out  # nothing was run again


def test_quick_run_refuses_the_committed_results(shared_data):
    import pytest

    with pytest.raises(SystemExit):
        load_example("acgkd_tu").main(["--data-root", shared_data, "--quick"])
