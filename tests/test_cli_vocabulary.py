"""One CLI vocabulary (issue 14, items 3 and 6): both spellings of every multi-word flag in every subcommand,
``--ckpt``/``--checkpoint`` wherever a checkpoint is read, and ``--teacher`` = the teacher checkpoint everywhere."""

import argparse
import json

import pytest
import torch

from dfkd_fast import cli
from dfkd_fast._cli_args import accept_both_spellings
from dfkd_fast.cpsc.teacher import checkpoint_record
from dfkd_fast.data.images import dataset_info
from dfkd_fast.models import build_model

SUBCOMMANDS = [("env", []), ("demo", []), ("teacher", ["--task", "image"]), ("teacher", ["--task", "graph"]),
               ("cpsc", []), ("acgkd", []), ("eval", ["--task", "image"]), ("eval", ["--task", "graph"])]


def subparser(name, argv):
    parser, _ = cli.build_parser(name, argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices[name]


@pytest.mark.parametrize("name,argv", SUBCOMMANDS, ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_every_multi_word_flag_has_both_spellings(name, argv):
    _, p = subparser(name, argv)
    options = set(p._option_string_actions)
    for action in p._actions:
        for option in action.option_strings:
            if not option.startswith("--"):
                continue
            prefix, body = ("--no-", option[5:]) if option.startswith("--no-") else ("--", option[2:])
            for alt in (prefix + body.replace("_", "-"), prefix + body.replace("-", "_")):
                assert alt in options, f"{name} {argv}: {option} has no {alt}"
                assert p._option_string_actions[alt] is action


def test_both_spellings_parse_to_the_same_value():
    parser, _ = cli.build_parser("cpsc", [])
    for flag in ("--batch_size", "--batch-size"):
        assert parser.parse_args(["cpsc", flag, "7"]).batch_size == 7
    for flag in ("--eval_every", "--eval-every"):
        assert parser.parse_args(["cpsc", flag, "3"]).eval_every == 3
    for flag in ("--data-root", "--data_root"):
        assert parser.parse_args(["cpsc", flag, "D"]).data_root == "D"
    assert parser.parse_args(["cpsc", "--no-loss-IKD"]).loss_IKD is False
    assert parser.parse_args(["cpsc", "--no-loss_IKD"]).loss_IKD is False
    assert parser.parse_args(["cpsc", "--loss-IKD"]).loss_IKD is True
    graph, _ = cli.build_parser("acgkd", [])
    for flag in ("--eval-every", "--eval_every"):
        assert graph.parse_args(["acgkd", flag, "4"]).eval_every == 4
    for flag in ("--data-root", "--data_root"):
        assert graph.parse_args(["acgkd", flag, "D"]).data_root == "D"
    teacher, _ = cli.build_parser("teacher", ["--task", "image"])
    assert teacher.parse_args(["teacher", "--model", "m", "--dataset", "d", "--batch-size", "5"]).batch_size == 5


def test_helper_refuses_two_options_that_differ_only_in_spelling():
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--a_b")
    p.add_argument("--a-b", dest="other")
    with pytest.raises(ValueError, match="--a_b and --a-b name different options"):
        accept_both_spellings(p)


@pytest.mark.parametrize("task,flag", [(t, f) for t in ("image", "graph") for f in ("--ckpt", "--checkpoint")])
def test_eval_accepts_ckpt_and_checkpoint(task, flag):
    parser, _ = cli.build_parser("eval", ["--task", task])
    args = parser.parse_args(["eval", "--task", task, flag, "m.pt", "--dataset", "digits"])
    dest = "ckpt" if task == "image" else "checkpoint"
    assert getattr(args, dest) == "m.pt"


def test_graph_eval_with_ckpt_runs(tmp_path, capsys):
    """The README's `dfkd-fast eval --task graph --ckpt ...` line (it failed: graph eval took --checkpoint only)."""
    pytest.importorskip("torch_geometric")
    assert cli.main(["teacher", "--task", "graph", "--model", "gcn-2-8", "--epochs", "1",
                     "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--task", "graph", "--ckpt", str(tmp_path / "t" / "teacher.pt")]) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.fixture
def teacher_ckpt(tmp_path):
    data = dataset_info("digits")
    path = tmp_path / "teacher.pt"
    torch.save(checkpoint_record(build_model("small_cnn", 10, in_channels=1), "small_cnn", data,
                                 (data.mean, data.std), None), path)
    return str(path)


TINY = ["--student", "small_cnn_half", "--dataset", "digits", "--batch-size", "8", "--nz", "8", "--ngf", "4",
        "--epochs", "1", "--epoch-itrs", "1", "--G-steps", "1", "--S-steps", "1", "--sample-every", "0"]


def test_cpsc_teacher_is_the_checkpoint_and_the_model_comes_from_it(tmp_path, teacher_ckpt, capsys):
    assert cli.main(["cpsc", "--teacher", teacher_ckpt, "--out", str(tmp_path / "r"), *TINY]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["teacher"] == "small_cnn" and config["ckpt"] == teacher_ckpt
    assert "deprecated" not in capsys.readouterr().err


def test_cpsc_old_teacher_form_still_works_with_one_deprecation_line(tmp_path, teacher_ckpt, capsys):
    assert cli.main(["cpsc", "--teacher", "small_cnn", "--ckpt", teacher_ckpt, "--out", str(tmp_path / "r"),
                     *TINY]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert len(err) == 1 and "--teacher PATH" in err[0]


def test_cpsc_teacher_model_name_without_checkpoint_explains(tmp_path, capsys):
    assert cli.main(["cpsc", "--teacher", "resnet34", "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--teacher is the teacher checkpoint" in err and "--teacher-arch resnet34" in err
    assert not (tmp_path / "r").exists()


def test_every_command_reading_a_checkpoint_takes_ckpt_and_checkpoint():
    for name, argv, dest in [("acgkd", [], "teacher"), ("cpsc", [], "ckpt")]:
        parser, _ = cli.build_parser(name, argv)
        for flag in ("--ckpt", "--checkpoint"):
            assert getattr(parser.parse_args([name, flag, "t.pt"]), dest) == "t.pt"
    acgkd, _ = cli.build_parser("acgkd", [])
    assert acgkd.parse_args(["acgkd", "--teacher", "t.pt"]).teacher == "t.pt"
