"""Run directories (issue 15 items 3, 4, 6, 7, 8, 14, 15; issue 14 item 7 and its run items): the lock, restart
of a run stopped before its first checkpoint, temporary files, file modes, one-line errors, extending a run with
``--resume --epochs``, log.txt, curves.png, config.json, no empty folder after a failed command."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import dfkd_fast.runs as runs
from dfkd_fast.cli import main
from dfkd_fast.cpsc.config import CPSCConfig, student_lr
from dfkd_fast.cpsc.teacher import checkpoint_record
from dfkd_fast.data.images import dataset_info
from dfkd_fast.errors import DfkdError
from dfkd_fast.models import build_model
from dfkd_fast.runs import RunDir, atomic_save

from helpers import one_line

DIGITS = dataset_info("digits")
TINY = ["--batch_size", "8", "--nz", "8", "--ngf", "4", "--epochs", "2", "--epoch_itrs", "1", "--G_steps", "1",
        "--S_steps", "1", "--warmup_epochs", "1", "--sample_every", "0"]
GRAPH_TINY = ["--num-graphs", "8", "--min-nodes", "4", "--max-nodes", "8", "--iterations", "2", "--epochs", "2",
              "--checkpoint-every", "2", "--eval-every", "1", "--pictures", "0"]


def cpsc(out, ckpt, *extra):
    return ["cpsc", "--teacher-arch", "small_cnn_half", "--student", "small_cnn_half", "--dataset", "digits", "--teacher",
            ckpt, "--out", str(out), *TINY, *extra]


# ------------------------------------------------------------------------------------------------ item 3: lock
def test_a_live_run_locks_its_directory(tmp_path, image_teacher, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dfkd_fast.runs import RunDir; "
                               f"RunDir({str(out)!r}); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        (out / "config.json").write_text("{}")
        one_line(capsys, cpsc(out, image_teacher), "in use by a live run", f"process {holder.pid}")
        one_line(capsys, ["cpsc", "--out", str(out), "--resume"], "in use by a live run")
        with pytest.raises(DfkdError, match="in use"):
            RunDir(out)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file is stale and taken over
    assert (out / "run.lock").read_text().split()[0] == str(holder.pid)
    with RunDir(out) as run:
        assert (out / "run.lock").read_text().split()[0] == str(os.getpid())
        run.log({"epoch": 1})
    assert not (out / "run.lock").exists()  # released on close


def test_without_flock_the_lock_falls_back_to_the_pid(tmp_path, monkeypatch):
    def no_flock(fd, flags):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runs.fcntl, "flock", no_flock)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "run.lock").write_text(f"{live.pid} {socket.gethostname()}\n")
        with pytest.raises(DfkdError, match=f"in use by a live run \\(process {live.pid}"):
            RunDir(tmp_path / "run")
    finally:
        live.kill()
        live.wait()
    (tmp_path / "run" / "run.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    with RunDir(tmp_path / "run"):  # stale: its process is gone
        assert (tmp_path / "run" / "run.lock").read_text().split()[0] == str(os.getpid())


# ----------------------------------------------------------------------- item 4: crash before the first checkpoint
def test_a_run_without_checkpoint_restarts_cleanly(tmp_path, image_teacher):
    full, out = tmp_path / "full", tmp_path / "run"
    assert main(cpsc(full, image_teacher)) == 0
    # what a crash before the first checkpoint leaves: config.json and a record with a torn line after it
    out.mkdir()
    (out / "config.json").write_text((full / "config.json").read_text().replace(str(full), str(out)))
    (out / "metrics.jsonl").write_text('{"epoch": 0, "teacher_ac')
    assert main(["cpsc", "--out", str(out), "--resume"]) == 0  # no checkpoint: --resume restarts
    assert "restarting it from the start" in (out / "log.txt").read_text()
    assert (out / "metrics.jsonl").read_text().count('"epoch": 0') == 1
    (out / "checkpoint.pt").unlink()
    (out / "metrics.jsonl").write_text('{"epoch": 0, "teacher_acc": 0.1}\n')
    assert main(cpsc(out, image_teacher)) == 0  # the same command again: records are not appended to
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("epoch_s", "images_per_s")}  # noqa
                          for line in path.read_text().splitlines()]
    assert strip(out / "metrics.jsonl") == strip(full / "metrics.jsonl")


# --------------------------------------------------------------------------- items 8, 15: temp files and modes
def test_temp_files_of_interrupted_writes_are_removed(tmp_path):
    (tmp_path / "run" / "samples").mkdir(parents=True)
    leftovers = [tmp_path / "run" / ".checkpoint.pt.1a2b3c4d.tmp", tmp_path / "run" / "samples" / ".x.png.00.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with RunDir(tmp_path / "run"):
        assert not any(p.exists() for p in leftovers) and (tmp_path / "run" / "keep.txt").exists()


def test_atomic_save_failure_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(obj, f):
        f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DfkdError, match=r"cannot write .*ck.pt: .*file write failed \(is the disk full\?\)"):
        atomic_save({"a": 1}, tmp_path / "ck.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with RunDir(tmp_path / "run") as run:
            run.write_config({"a": 1})
            atomic_save({"a": torch.zeros(1)}, run.path / "model.pt")
            run.save({})
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("model.pt", "checkpoint.pt", "config.json"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == expected, name


# ----------------------------------------------------------------------------------- items 6, 7, 14: messages
def test_bad_run_directories_and_checkpoints_are_one_line(tmp_path, image_teacher, graph_teacher, capsys):
    (tmp_path / "file").write_text("")
    one_line(capsys, cpsc(tmp_path / "file", image_teacher), "is a file, not a directory")
    one_line(capsys, cpsc(tmp_path / "file" / "sub", image_teacher), "is a file, not a directory")
    one_line(capsys, cpsc(tmp_path / ("x" * 300), image_teacher), "File name too long")
    one_line(capsys, cpsc(tmp_path / "m", image_teacher, "--device", "meta"), "--device meta")
    # an ACGKD run resumed as CPSC, a checkpoint without RNG state, a config.json without its keys
    acgkd = tmp_path / "acgkd"
    assert main(["acgkd", "--teacher", graph_teacher, "--out", str(acgkd), *GRAPH_TINY]) == 0
    one_line(capsys, ["cpsc", "--out", str(acgkd), "--resume"], "holds a `dfkd-fast acgkd` run")
    state = torch.load(acgkd / "checkpoint.pt", weights_only=True)
    del state["rng"]
    torch.save(state, acgkd / "checkpoint.pt")
    one_line(capsys, ["acgkd", "--out", str(acgkd), "--resume"], "not a dfkd-fast run checkpoint")
    del state["student"]
    state["rng"] = runs.rng_state()
    torch.save(state, acgkd / "checkpoint.pt")
    one_line(capsys, ["acgkd", "--out", str(acgkd), "--resume"], "does not fit this run", "student")
    assert "does not fit this run" in (acgkd / "log.txt").read_text()  # errors land in the run's log.txt too
    (acgkd / "config.json").write_text(json.dumps({"config": {}}))
    one_line(capsys, ["acgkd", "--out", str(acgkd), "--resume"], "lacks cli")


def test_unwritable_out_is_one_line(tmp_path, image_teacher, monkeypatch, capsys):
    # (the tests may run as root, for whom chmod does not make a folder read-only: simulate what the OS says)
    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(type(tmp_path), "mkdir", denied)
    one_line(capsys, cpsc(tmp_path / "ro" / "run", image_teacher), "cannot create the run directory",
             "Permission denied")


def test_bad_training_options_are_one_line(tmp_path, image_teacher, capsys):
    for limit in ("0", "-3"):
        one_line(capsys, cpsc(tmp_path / "c", image_teacher, "--eval_limit", limit), "--eval_limit must be >= 1")
    one_line(capsys, ["eval", "--ckpt", image_teacher, "--dataset", "digits", "--limit", "0"], "must hold >= 1")
    image = ["teacher", "--task", "image", "--model", "small_cnn_half", "--dataset", "digits", "--out",
             str(tmp_path / "t")]
    for epochs in ("0", "-1"):
        one_line(capsys, [*image, "--epochs", epochs], "--epochs must be >= 1")
    one_line(capsys, [*image, "--batch_size", "0"], "--batch_size must be >= 1")
    one_line(capsys, [*image, "--lr", "nan"], "--lr must be a finite number > 0")
    graph = ["teacher", "--task", "graph", "--out", str(tmp_path / "g")]
    one_line(capsys, [*graph, "--batch-size", "0"], "batch_size must be >= 1")
    one_line(capsys, [*graph, "--epochs", "0"], "--epochs must be >= 1")
    one_line(capsys, [*graph, "--lr", "nan"], "--lr must be a finite number > 0")
    assert not any((tmp_path / name).exists() for name in ("c", "t", "g"))


def test_misleading_model_messages(tmp_path, graph_teacher, capsys):
    half = tmp_path / "half.pt"
    torch.save(checkpoint_record(build_model("small_cnn_half", 10, in_channels=1), "small_cnn_half", DIGITS,
                                 (DIGITS.mean, DIGITS.std), None), half)
    err = one_line(capsys, ["cpsc", "--teacher-arch", "small_cnn", "--student", "small_cnn_half", "--dataset", "digits",
                            "--teacher", str(half), "--out", str(tmp_path / "c"), *TINY],
                   "features into its classifier", "another width")
    assert "classes" not in err
    err = one_line(capsys, ["acgkd", "--teacher", graph_teacher, "--teacher-arch", "gcn-5-16", "--out",
                            str(tmp_path / "a")], "depths do not match")
    assert "widths" not in err


# ------------------------------------------------------------------ issue 14 item 7: --resume with other flags
def test_resume_extends_a_finished_run_or_refuses(tmp_path, image_teacher, capsys):
    out = tmp_path / "run"
    assert main(cpsc(out, image_teacher)) == 0
    one_line(capsys, ["cpsc", "--out", str(out), "--resume", "--lr_S", "0.5"], "--lr_S 0.5 differs", "0.1")
    one_line(capsys, ["cpsc", "--out", str(out), "--resume", "--epochs", "1"], "cannot be shortened")
    assert main(["cpsc", "--out", str(out), "--resume", "--epochs", "2", "--device", "cpu"]) == 0  # same: a no-op
    assert main(["cpsc", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    assert "extended to 3 epochs" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 3
    stored = CPSCConfig.from_dict(config)
    assert records[3]["lr_S"] == student_lr(stored, 3)  # the schedule of a 3-epoch run from epoch 3 on
    assert torch.load(out / "final_student.pt", weights_only=True)["epoch"] == 3


def test_teacher_runs_extend_with_the_cosine_of_the_new_length(tmp_path, capsys):
    out = tmp_path / "teacher"
    argv = ["teacher", "--task", "image", "--model", "small_cnn_half", "--dataset", "digits", "--out", str(out)]
    assert main([*argv, "--epochs", "1"]) == 0
    one_line(capsys, ["teacher", "--out", str(out), "--resume", "--lr", "0.2"], "--lr 0.2 differs")
    assert main(["teacher", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


def test_graph_runs_extend_too(tmp_path, graph_teacher, capsys):
    out = tmp_path / "run"
    assert main(["acgkd", "--teacher", graph_teacher, "--out", str(out), *GRAPH_TINY]) == 0
    one_line(capsys, ["acgkd", "--out", str(out), "--resume", "--w-kd", "2"], "--w-kd 2.0 differs")
    assert main(["acgkd", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    kd = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()
          if '"kd"' in line]
    assert kd == [1, 2, 3]
    teacher = tmp_path / "teacher"
    assert main(["teacher", "--task", "graph", "--model", "gcn-3-8", "--epochs", "1", "--out", str(teacher)]) == 0
    assert main(["teacher", "--task", "graph", "--out", str(teacher), "--resume", "--epochs", "2"]) == 0
    assert [json.loads(line)["epoch"] for line in (teacher / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    config = json.loads((teacher / "config.json").read_text())
    assert config["epochs"] == 2 and config["world_size"] == 1 and config["global_batch"] == 32


# -------------------------------------------------------------------------- issue 14: what a run directory holds
def test_run_directory_holds_log_curves_and_world_size(tmp_path, image_teacher, capsys):
    out = tmp_path / "run"
    assert main(cpsc(out, image_teacher)) == 0
    log = (out / "log.txt").read_text()
    assert "epoch 2/2" in log and "run directory" in log
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 1 and config["global_batch"] == 8 and config["command"] == "cpsc"
    (out / "config.json").write_text(json.dumps({**config, "world_size": 2}))
    one_line(capsys, ["cpsc", "--out", str(out), "--resume"], "was run by 2 processes")
    one_line(capsys, cpsc(out, image_teacher), "already holds a run")


def test_a_failed_command_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    one_line(capsys, cpsc(out, str(tmp_path / "missing.pt")), "checkpoint not found")
    assert not (tmp_path / "a").exists()
    one_line(capsys, ["teacher", "--task", "image", "--model", "nope", "--dataset", "digits", "--out", str(out)])
    assert not (tmp_path / "a").exists()


def test_messages_go_to_the_log_of_the_directory_opened_last(tmp_path, capsys):
    with RunDir(tmp_path / "a") as a:
        runs.say("first")
        with RunDir(tmp_path / "b") as b:
            runs.say("second")
        runs.say("third")
    assert (a.path / "log.txt").read_text().split()[2::3] == ["first", "third"]
    assert (b.path / "log.txt").read_text().split()[2::3] == ["second"]
    assert capsys.readouterr().out.split() == ["first", "second", "third"]
