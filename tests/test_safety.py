"""Nothing executed, nothing reported as success that failed (issue 15 items 1, 2, 5).

* A checkpoint whose pickle runs code (its ``__reduce__`` writes a marker file), handed to every command that reads a
  checkpoint and to every Python loader, executes nothing and is refused in one line.
* The RNG states a run checkpoint carries are tensors and lists: run checkpoints load with ``weights_only=True``.
* A diverging run (non-finite loss or weights) stops with one line naming the term and the flag to lower, writes no
  model file, and metrics.jsonl stays strict JSON.
"""

import dataclasses
import json
import math
import pickle
import random

import numpy as np
import pytest
import torch

from dfkd_fast.acgkd.config import make_config
from dfkd_fast.acgkd.teacher import load_model, load_teacher
from dfkd_fast.cli import main
from dfkd_fast.cpsc.config import CPSCConfig
from dfkd_fast.cpsc.teacher import load_classifier
from dfkd_fast.data.images import dataset_info
from dfkd_fast.errors import DfkdError, DivergenceError
from dfkd_fast.models import build_model, load_weights
from dfkd_fast.runs import RunDir, load_checkpoint, rng_state, set_rng_state

from helpers import one_line

DIGITS = dataset_info("digits")
GRAPH_TINY = ["--num-graphs", "8", "--min-nodes", "4", "--max-nodes", "8", "--iterations", "3", "--epochs", "2",
              "--checkpoint-every", "2", "--eval-every", "1", "--pictures", "0"]
CPSC_TINY = ["--batch_size", "8", "--nz", "8", "--ngf", "4", "--epochs", "2", "--epoch_itrs", "1", "--G_steps", "2",
             "--S_steps", "1", "--warmup_epochs", "1", "--sample_every", "0"]


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture(params=["torch.save", "pickle"])
def hostile(request, tmp_path):
    """(path of a hostile checkpoint, marker its unpickling would create)."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "hostile.pt"
    obj = {"state_dict": {"w": torch.zeros(1)}, "model": "small_cnn_half", "kind": "dfkd_fast.graph_model",
           "rng": Payload(marker)}
    if request.param == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    return path, marker


def refused(capsys, argv, marker):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "the checkpoint's code ran"
    assert err.startswith("dfkd-fast: error:") and "\n" not in err and "refused" in err, err


def run_dir_with(tmp_path, config: dict, checkpoint) -> str:
    out = tmp_path / "run"
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    (out / "checkpoint.pt").write_bytes(checkpoint.read_bytes())
    return str(out)


def test_commands_refuse_a_hostile_checkpoint(hostile, graph_teacher, tmp_path, capsys):
    path, marker = hostile
    refused(capsys, ["cpsc", "--teacher-arch", "small_cnn_half", "--student", "small_cnn_half", "--dataset", "digits",
                     "--teacher", str(path), "--out", str(tmp_path / "c"), *CPSC_TINY], marker)
    refused(capsys, ["acgkd", "--teacher", str(path), "--out", str(tmp_path / "a"), *GRAPH_TINY], marker)
    refused(capsys, ["eval", "--task", "image", "--ckpt", str(path), "--dataset", "digits"], marker)
    refused(capsys, ["eval", "--task", "graph", "--checkpoint", str(path)], marker)
    assert not (tmp_path / "c").exists() and not (tmp_path / "a").exists()


def test_resume_refuses_a_hostile_checkpoint(hostile, graph_teacher, image_teacher, tmp_path, capsys):
    path, marker = hostile
    cpsc = CPSCConfig(teacher="small_cnn_half", student="small_cnn_half", dataset="digits", batch_size=8, nz=8, ngf=4,
                      epochs=1, epoch_itrs=1, eval_every=0)
    configs = {
        "cpsc": {**cpsc.to_dict(), "ckpt": image_teacher, "data_root": None, "eval_limit": None},
        "acgkd": {"config": dataclasses.asdict(make_config("acgkd", num_graphs=8, min_nodes=4, max_nodes=8,
                                                           iterations=1, epochs=1)),
                  "cli": {"teacher": graph_teacher, "method": "acgkd", "data_root": None}},
        "teacher-image": {"model": "small_cnn_half", "dataset": "digits", "epochs": 1, "batch_size": 64, "lr": 0.1,
                          "momentum": 0.9, "weight_decay": 5e-4, "augment": None, "seed": 1},
        "teacher-graph": {"dataset": "motifs", "model": "gcn-3-16", "epochs": 1, "lr": 0.01, "batch_size": 32,
                          "seed": 0, "split_seed": 29, "folds": None, "fold": 0},
    }
    argvs = {"cpsc": ["cpsc"], "acgkd": ["acgkd"], "teacher-image": ["teacher", "--task", "image"],
             "teacher-graph": ["teacher", "--task", "graph"]}
    for command, config in configs.items():
        out = run_dir_with(tmp_path / command, {**config, "command": command}, path)
        refused(capsys, [*argvs[command], "--out", out, "--resume"], marker)


def test_python_loaders_refuse_a_hostile_checkpoint(hostile):
    path, marker = hostile
    model = build_model("small_cnn_half", 10, in_channels=1)
    loaders = [lambda: load_checkpoint(path), lambda: load_weights(model, path),
               lambda: load_classifier("small_cnn_half", path, DIGITS), lambda: load_model(path),
               lambda: load_teacher(path)]
    for load in loaders:
        with pytest.raises(DfkdError, match="refused: it holds more than tensors"):
            load()
    assert not marker.exists()


def test_run_checkpoints_hold_only_tensors_and_plain_data(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.randn()  # a cached Gaussian in numpy's state
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(), torch.rand(2))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.randn(), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def strict_json_lines(path):
    if path.is_file():
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=lambda token: pytest.fail(f"bare {token} in {path}"))


@pytest.mark.parametrize("flags,fragment", [
    (["--lr", "inf"], "--lr"),
    (["--lr", "1e30"], "--lr"),
    (["--w-kd", "nan"], "--w-kd"),
    (["--t-range", "nan"], "--t-range"),
    (["--method", "gfkd", "--lr-structure", "nan"], "--lr-structure"),
])
def test_graph_divergence_stops_with_one_line(flags, fragment, graph_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    one_line(capsys, ["acgkd", "--teacher", graph_teacher, "--out", str(out), *GRAPH_TINY, *flags], "diverged",
             fragment)
    assert not (out / "student.pt").exists()
    strict_json_lines(out / "metrics.jsonl")


def test_cpsc_divergence_inside_an_op_check_is_one_line(image_teacher, tmp_path, capsys):
    # lr_G = inf: the generator's weights turn NaN in the first step; the second step's BN-statistics op refuses
    # its NaN input (a ValueError) before the epoch's losses are checked: item 5
    out = tmp_path / "run"
    one_line(capsys, ["cpsc", "--teacher-arch", "small_cnn_half", "--student", "small_cnn_half", "--dataset", "digits",
                      "--teacher", image_teacher, "--out", str(out), *CPSC_TINY, "--lr_G", "inf"],
             "diverged at epoch 1", "generator weights", "--lr_G")
    assert not out.exists()  # no checkpoint was written: the failed command leaves no folder


def test_teachers_never_save_a_diverged_model(tmp_path, capsys, monkeypatch):
    one_line(capsys, ["teacher", "--task", "graph", "--dataset", "motifs", "--model", "gcn-3-16", "--epochs", "2",
                      "--lr", "1e30", "--out", str(tmp_path / "g")], "diverged", "--lr")
    assert not (tmp_path / "g" / "teacher.pt").exists()
    one_line(capsys, ["teacher", "--task", "graph", "--lr", "nan", "--out", str(tmp_path / "g")], "--lr", "finite")
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * math.nan)
    one_line(capsys, ["teacher", "--task", "image", "--model", "small_cnn_half", "--dataset", "digits", "--epochs",
                      "1", "--out", str(tmp_path / "i")], "diverged at epoch 1", "loss", "--lr")
    assert not (tmp_path / "i" / "teacher.pt").exists()


def test_metrics_refuse_non_finite_values(tmp_path):
    with RunDir(tmp_path / "run") as run:
        run.log({"epoch": 1, "loss": 0.5})
        with pytest.raises(DivergenceError, match="non-finite loss"):
            run.log({"epoch": 2, "loss": math.nan})
        assert run.metrics() == [{"epoch": 1, "loss": 0.5}]


def test_cli_prints_an_op_validation_error_as_one_line(monkeypatch, capsys):
    import dfkd_fast.cpsc.evaluate as evaluate
    from dfkd_fast.ops import supcon_loss

    monkeypatch.setattr(evaluate, "run", lambda args: supcon_loss(torch.full((4, 2, 3), math.nan),
                                                                    torch.zeros(4, dtype=torch.long)))
    one_line(capsys, ["eval", "--ckpt", "x", "--dataset", "digits"], "supcon_loss", "NaN")
    monkeypatch.setattr(evaluate, "run", lambda args: int("not a number"))  # a bug is not dressed up as input
    with pytest.raises(ValueError):
        main(["eval", "--ckpt", "x", "--dataset", "digits"])


def test_cifar_batches_rebuild_arrays_and_nothing_else(tmp_path):
    from dfkd_fast.data.images import load_images

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"testing batch", b"labels": [3, 7], b"data": images, b"filenames": [b"a.png", b"b.png"]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = load_images("cifar10", "test", tmp_path)
    assert torch.equal(x.flatten(1), torch.from_numpy(images)) and y.tolist() == [3, 7]
    marker = tmp_path / "MARKER"
    (folder / "test_batch").write_bytes(pickle.dumps({**batch, b"extra": Payload(marker)}, protocol=2))
    with pytest.raises(DfkdError, match="refused: a CIFAR batch holds arrays and labels only"):
        load_images("cifar10", "test", tmp_path)
    assert not marker.exists()
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(DfkdError, match="not a CIFAR batch"):
        load_images("cifar10", "test", tmp_path)
