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


def test_teachers_are_chosen_by_training_accuracy_only(shared_data, tmp_path, capsys):
    """The study's teacher seeds follow from the recorded training accuracies (no test label), and
    --choose-teachers prints the rule's choice from freshly trained candidates."""
    study = load_example("acgkd_tu")
    for name, settings in study.SETTINGS.items():
        accs = study.TEACHER_TRAIN_ACC[name]
        assert settings["teacher_seed"] == max(study.TEACHER_SEEDS, key=lambda s: (accs[s], -s)), name
    argv = ["--data-root", os.path.join(shared_data, "TU"), "--datasets", "MUTAG", "--quick", "--choose-teachers",
            "--cache", str(tmp_path / "c"), "--table", str(tmp_path / "t.md"), "--readme", "none"]
    assert study.main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    accs = [float(a) for a in line.split("]: ")[1].split(" %")[0].split(" / ")]
    assert len(accs) == 5 and line.endswith(f"teacher seed {max(range(5), key=lambda s: (accs[s], -s))}")


def test_set_runs_an_ablation_apart_from_the_study(shared_data, tmp_path):
    study = load_example("acgkd_tu")
    argv = ["--data-root", os.path.join(shared_data, "TU"), "--datasets", "MUTAG", "--students", "gin-3-32",
            "--methods", "acgkd", "--seeds", "1", "--quick", "--set", "xi=0.1", "curriculum=size",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--table", str(tmp_path / "t.md"),
            "--readme", "none"]
    assert study.main(argv) == 0
    cell = json.loads((tmp_path / "cache" / "MUTAG" / "acgkd-gin-3-32-seed0.json").read_text())
    assert cell["options"]["xi"] == 0.1 and cell["options"]["curriculum"] == "size"
    assert (tmp_path / "out" / "MUTAG" / "generation-acgkd-seed0-curriculum=size-xi=0.1.pt").is_file()


def test_set_refuses_the_committed_results(shared_data):
    import pytest

    with pytest.raises(SystemExit):
        load_example("acgkd_tu").main(["--data-root", shared_data, "--set", "xi=0.1"])


def test_a_development_split_keeps_apart_from_the_study(shared_data, tmp_path):
    """--split-seed trains its teacher on that split's graphs (not GFKD's), keeps its runs apart and says so."""
    import pytest
    import torch

    study = load_example("acgkd_tu")
    root = os.path.join(shared_data, "TU")
    with pytest.raises(SystemExit):
        study.main(["--data-root", root, "--split-seed", "1"])
    argv = ["--data-root", root, "--datasets", "MUTAG", "--students", "gcn-3-32", "--methods", "real", "--seeds",
            "1", "--quick", "--split-seed", "1", "--teacher-seed", "1", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "--table", str(tmp_path / "t.md"), "--readme", "none"]
    assert study.main(argv) == 0
    saved = torch.load(tmp_path / "out" / "split1" / "MUTAG" / "teacher.pt", weights_only=True)
    assert saved["split"] == {"seed": 1}
    _, dev_train, _ = study.dataset_and_split("MUTAG", root, split_seed=1)
    _, gfkd_train, _ = study.dataset_and_split("MUTAG", root)
    assert saved["train_size"] == len(dev_train)
    assert [g.num_nodes for g in dev_train] != [g.num_nodes for g in gfkd_train]
    table = (tmp_path / "t.md").read_text()
    assert "development 70/30 split of seed 1" in table and "teacher seed 1 (" in table


def test_another_teacher_architecture_keeps_apart_from_the_study(shared_data, tmp_path):
    import pytest
    import torch

    study = load_example("acgkd_tu")
    root = os.path.join(shared_data, "TU")
    outputs = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--table", str(tmp_path / "t.md"),
               "--readme", "none"]
    with pytest.raises(SystemExit):
        study.main(["--data-root", root, "--teacher", "gin-5-64"])  # over the study's outputs
    with pytest.raises(SystemExit):
        study.main(["--data-root", root, "--teacher", "mlp-5-64", *outputs])
    argv = ["--data-root", root, "--datasets", "MUTAG", "--students", "gcn-3-32", "--methods", "real", "--seeds", "1",
            "--quick", "--teacher", "gin-5-64", "--teacher-seed", "3", *outputs]
    assert study.main(argv) == 0
    saved = torch.load(tmp_path / "out" / "teacher-gin-5-64" / "MUTAG" / "teacher.pt", weights_only=True)
    assert saved["arch"] == "gin-5-64"
    table = (tmp_path / "t.md").read_text()
    assert "Teacher gin-5-64 (seeded)" in table and "--teacher gin-5-64" in table and "teacher seed 3 (" in table


def test_the_tables_name_a_pseudo_graph_count_other_than_the_training_sets(tmp_path):
    study = load_example("acgkd_tu")
    (tmp_path / "MUTAG").mkdir()
    (tmp_path / "MUTAG" / "dataset.json").write_text(json.dumps(
        {"teacher_acc": 0.789, "graphs": 131, "majority": 0.684, "per_step": {"acgkd": 0.05, "gfkd": 0.05}}))
    for method, options in (("acgkd", {"num_graphs": 131, "graph_factor": 3.0}), ("gfkd", {"num_graphs": 131})):
        cell = {"dataset": "MUTAG", "student": "gin-3-32", "method": method, "seed": 0, "last": 0.8, "selected": 0.8,
                "best": 0.8, "selected_epoch": 300, "selected_top_class_fraction": 0.7, "kd_s": 1.0, "gen_s": 28.0,
                "gen_steps": 200, "options": options}
        (tmp_path / "MUTAG" / f"{method}-gin-3-32-seed0.json").write_text(json.dumps(cell))
    text = study.tables(tmp_path, [0], ["MUTAG", "PROTEINS"])
    assert "| 28 s (200 steps, 393 graphs) / 28 s (200 steps) |" in text
    budgets = next(line for line in text.splitlines() if line.startswith("Budgets"))
    assert "MUTAG: KD 300 epochs, ACGKD 200 steps on 3x the training-set count of pseudo-graphs, GFKD" in budgets
    assert "PROTEINS: KD 40 epochs, ACGKD 100 steps, GFKD" in budgets
