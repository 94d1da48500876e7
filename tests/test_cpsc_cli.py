"""The ``dfkd-fast cpsc / teacher / eval`` commands: the run directory, bit-for-bit resume after a run is stopped
mid-epoch, and one-line errors for bad input."""

import json

import pytest
import torch

from dfkd_fast.cli import main
from dfkd_fast.cpsc.teacher import checkpoint_record
from dfkd_fast.cpsc.trainer import CPSCTrainer
from dfkd_fast.data.images import dataset_info
from dfkd_fast.models import build_model

TINY = ["--batch_size", "16", "--nz", "16", "--ngf", "8", "--epochs", "3", "--epoch_itrs", "2", "--G_steps", "1",
        "--S_steps", "1", "--warmup_epochs", "1", "--sample_every", "2"]


@pytest.fixture
def teacher_ckpt(tmp_path):
    """An (untrained) digits teacher in the format `dfkd-fast teacher` writes."""
    data = dataset_info("digits")
    model = build_model("small_cnn", 10, in_channels=1)
    path = tmp_path / "teacher.pt"
    torch.save(checkpoint_record(model, "small_cnn", data, (data.mean, data.std), None), path)
    return str(path)


def cpsc(out, ckpt, *extra):
    return main(["cpsc", "--teacher", ckpt, "--teacher-arch", "small_cnn", "--student", "small_cnn_half", "--dataset",
                 "digits", "--out", str(out), *TINY, *extra])


def states(path):
    return torch.load(path, weights_only=False)["state_dict"]


def test_run_directory_and_bit_for_bit_resume(tmp_path, teacher_ckpt, monkeypatch, capsys):
    assert cpsc(tmp_path / "full", teacher_ckpt) == 0
    full = tmp_path / "full"
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "final_student.pt", "best_student.pt",
                 "final_generator.pt", "samples/epoch_0002.png", "samples/epoch_0003.png"):
        assert (full / name).is_file(), name
    config = json.loads((full / "config.json").read_text())
    assert config["G_steps"] == 1 and config["co_alpha"] == 5.0 and config["loss_SCL"] is True
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3] and "teacher_acc" in records[0]
    assert {"loss_G", "G_scl", "G_bn", "loss_S", "acc", "best_acc", "lr_S"} <= set(records[1])

    # stop a second run in the middle of epoch 2 (its first student step), then resume it
    calls = {"n": 0}
    step = CPSCTrainer.student_step

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(CPSCTrainer, "student_step", interrupted)
    assert cpsc(tmp_path / "stopped", teacher_ckpt) == 130
    monkeypatch.setattr(CPSCTrainer, "student_step", step)
    stopped = tmp_path / "stopped"
    assert not (stopped / "final_student.pt").exists()
    assert main(["cpsc", "--out", str(stopped), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    for name in ("final_student.pt", "final_generator.pt"):
        a, b = states(full / name), states(stopped / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    resumed = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("epoch_s", "images_per_s")}  # noqa: E731
    assert [strip(r) for r in resumed] == [strip(r) for r in records]


def test_eval_and_teacher_commands(tmp_path, capsys):
    assert main(["teacher", "--task", "image", "--model", "small_cnn_half", "--dataset", "digits", "--epochs", "2",
                 "--out", str(tmp_path / "t")]) == 0
    ckpt = tmp_path / "t" / "teacher.pt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["model"] == "small_cnn_half" and saved["num_classes"] == 10 and saved["acc"] > 0.5
    capsys.readouterr()
    assert main(["eval", "--task", "image", "--ckpt", str(ckpt), "--dataset", "digits"]) == 0
    assert f"top-1 {saved['acc']:.2%}" in capsys.readouterr().out


def one_line_error(capsys, argv, match):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfkd-fast: error: ") and err.count("\n") == 1, err
    assert match in err, err


def test_bad_input_gives_one_line_errors(tmp_path, teacher_ckpt, capsys):
    base = ["cpsc", "--teacher", teacher_ckpt, "--out", str(tmp_path / "r"), *TINY]
    one_line_error(capsys, [*base, "--teacher-arch", "resnet35", "--dataset", "digits"], "unknown model 'resnet35'")
    one_line_error(capsys, [*base, "--teacher-arch", "small_cnn", "--student", "wrn_16_3", "--dataset", "digits"],
                   "unknown model 'wrn_16_3'")
    one_line_error(capsys, [*base, "--teacher-arch", "small_cnn", "--dataset", "svhn"], "unknown dataset 'svhn'")
    # a 10-class teacher checkpoint for a 100-class dataset
    one_line_error(capsys, [*base, "--teacher-arch", "small_cnn", "--dataset", "cifar100", "--eval_every", "0"],
                   "is for 10 classes (fc.weight (10, 128)) but the teacher small_cnn was built for 100 classes")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, [*base, "--teacher-arch", "small_cnn", "--dataset", "cifar10", "--data-root", str(empty)],
                   "cifar10: file test_batch not found")
    one_line_error(capsys, [*base, "--teacher-arch", "small_cnn", "--dataset", "cifar10"], "needs --data-root")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    one_line_error(capsys, ["cpsc", "--teacher", str(corrupt), "--dataset", "digits", "--teacher-arch", "small_cnn",
                            "--out", str(tmp_path / "c")], "is corrupt or not a torch checkpoint")
    one_line_error(capsys, ["cpsc", "--out", str(tmp_path / "none"), "--resume"], "holds no run")
    one_line_error(capsys, ["cpsc", "--dataset", "digits", "--teacher-arch", "small_cnn", "--out",
                            str(tmp_path / "n")], "--teacher (the teacher checkpoint) is required")
    one_line_error(capsys, ["eval", "--ckpt", teacher_ckpt, "--dataset", "mnist", "--data-root", str(empty)],
                   "mnist: file t10k-images-idx3-ubyte.gz not found")
    one_line_error(capsys, ["eval", "--ckpt", teacher_ckpt, "--dataset", "cifar100", "--data-root", str(empty)],
                   "is for 10 classes")
    assert cpsc(tmp_path / "done", teacher_ckpt, "--epochs", "1") == 0
    one_line_error(capsys, ["cpsc", "--teacher", teacher_ckpt, "--dataset", "digits", "--out", str(tmp_path / "done")],
                   "already holds a run; pass --resume")
