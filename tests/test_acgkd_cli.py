"""``dfkd-fast teacher/acgkd/eval --task graph`` through ``dfkd_fast.cli.main``: a whole run, and one-line errors."""

import json

import pytest
import torch

from dfkd_fast.cli import main

TINY = ["--num-graphs", "8", "--min-nodes", "4", "--max-nodes", "8", "--iterations", "3", "--epochs", "2",
        "--checkpoint-every", "2", "--eval-every", "1", "--pictures", "4"]


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["teacher", "--task", "graph", "--dataset", "motifs", "--model", "gcn-3-16", "--epochs", "2",
                 "--out", str(out)]) == 0
    return out / "teacher.pt"


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dfkd-fast: error:") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_teacher_acgkd_eval_round_trip(teacher_path, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["acgkd", "--teacher", str(teacher_path), "--out", str(out), "--student", "gin-3-8", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy selected (epoch " in printed and ", last " in printed and "best evaluated" in printed
    assert (out / "last_student.pt").is_file()
    selected = torch.load(out / "student.pt", weights_only=False)
    assert selected["selected_epoch"] in (1, 2) and selected["role"] == "student"
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["student"] == "gin-3-8" and config["cli"]["method"] == "acgkd"
    assert (out / "pictures.png").is_file() and (out / "student.pt").is_file()
    assert main(["eval", "--task", "graph", "--checkpoint", str(out / "student.pt")]) == 0
    assert "accuracy" in capsys.readouterr().out
    # a finished run resumes to the same end; a second run into the same directory is refused
    assert main(["acgkd", "--out", str(out), "--resume"]) == 0
    capsys.readouterr()  # (a collapse warning of the tiny student may be printed again)
    one_line_error(capsys, ["acgkd", "--teacher", str(teacher_path), "--out", str(out)], "--resume")


def test_none_options_and_old_behaviour_flags(teacher_path, tmp_path):
    """'none' reaches the config as None (--ema none: the raw student), and the old defaults are reachable."""
    argv = ["acgkd", "--teacher", str(teacher_path), "--out", str(tmp_path), *TINY, "--ema", "none", "--tau-end",
            "none", "--degree-cap", "none", "--no-connect-isolated", "--no-balanced-curriculum", "--no-even-batches",
            "--feature-loss", "sum", "--w-feat", "0.1", "--no-recalibrate-bn", "--holdout", "0"]
    assert main(argv) == 0
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    assert config["ema"] is None and config["tau_end"] is None and config["degree_cap"] is None
    assert not config["connect_isolated"] and not config["balanced_curriculum"] and not config["even_batches"]
    assert config["feature_loss"] == "sum" and config["holdout"] == 0


def test_gfkd_method_runs(teacher_path, tmp_path):
    assert main(["acgkd", "--method", "gfkd", "--teacher", str(teacher_path), "--out", str(tmp_path), *TINY]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["config"]["lr_structure"] == 1.0


def test_dataset_path_without_tu_files(tmp_path, capsys):
    one_line_error(capsys, ["teacher", "--task", "graph", "--dataset", "MUTAG", "--data-root", str(tmp_path),
                            "--out", str(tmp_path / "t")], "no TU dataset MUTAG", "MUTAG_A.txt")


def test_teacher_widths_do_not_match_the_config(teacher_path, tmp_path, capsys):
    one_line_error(capsys, ["acgkd", "--teacher", str(teacher_path), "--teacher-arch", "gcn-3-64",
                            "--out", str(tmp_path)], "gcn-3-16", "gcn-3-64", "widths do not match")


def test_teacher_checkpoint_whose_tensors_do_not_fit_its_architecture(teacher_path, tmp_path, capsys):
    state = torch.load(teacher_path, weights_only=False)
    state["state_dict"]["gcnlayers.1.weight"] = torch.zeros(16, 32)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    one_line_error(capsys, ["acgkd", "--teacher", str(bad), "--out", str(tmp_path / "r")],
                   "gcnlayers.1.weight", "(16, 32)", "widths do not match")


def test_budget_larger_than_the_node_pairs(teacher_path, tmp_path, capsys):
    one_line_error(capsys, ["acgkd", "--teacher", str(teacher_path), "--edge-budget", "50", "--min-nodes", "10",
                            "--out", str(tmp_path)], "--edge-budget 50", "45 node pairs")


@pytest.mark.parametrize("argv,fragment", [
    (["--method", "gfkd", "--xi", "0.2"], "no option --xi"),
    (["--xi", "1.5"], "--xi must be in (0, 1]"),
    (["--mean-degree", "0"], "--mean-degree must be > 0"),
    (["--selection-start", "1"], "--selection-start must be in [0, 1)"),
    (["--selection-draws", "0"], "--selection-draws must be >= 1"),
    (["--student", "mlp-2-3"], "gcn-L-H"),
    (["--teacher", "/nonexistent/teacher.pt"], "checkpoint not found"),
])
def test_other_bad_options(argv, fragment, teacher_path, tmp_path, capsys):
    one_line_error(capsys, ["acgkd", "--teacher", str(teacher_path), "--out", str(tmp_path), *argv], fragment)


def test_missing_data_for_real_kd(tmp_path, capsys):
    from dfkd_fast.acgkd.teacher import save_model
    from dfkd_fast.models.gnn import build_gnn

    path = tmp_path / "teacher.pt"
    save_model(path, build_gnn("gcn-3-8", 7, 2), dataset="MUTAG", split={"seed": 29}, train_size=131)
    one_line_error(capsys, ["acgkd", "--method", "real", "--teacher", str(path), "--out", str(tmp_path / "r")],
                   "--data-root")


def test_gfkd_recipe_defaults(tmp_path):
    """GFKD mode runs GFKD's protocol by default; a PROTEINS teacher gets GFKD's structure lr 5.0 unless given."""
    from dfkd_fast.acgkd.config import make_config
    from dfkd_fast.acgkd.teacher import save_model
    from dfkd_fast.models.gnn import build_gnn

    c = make_config("gfkd")
    assert (c.epochs, c.iterations, c.lr_structure, c.eval_every, c.fixed_order, c.even_batches) == (
        300, 1500, 1.0, 1, True, False)
    assert c.ema is None and not c.recalibrate_bn
    path = tmp_path / "teacher.pt"
    save_model(path, build_gnn("gcn-3-8", 3, 2), role="teacher", dataset="PROTEINS", split={"seed": 29},
               train_size=8)
    for extra, lr in (([], 5.0), (["--lr-structure", "2"], 2.0)):
        out = tmp_path / f"run{lr}"
        assert main(["acgkd", "--method", "gfkd", "--teacher", str(path), "--out", str(out), *TINY, *extra]) == 0
        assert json.loads((out / "config.json").read_text())["config"]["lr_structure"] == lr
