"""The trainers end to end at toy sizes: every method runs, writes its run directory and resumes bit for bit."""

import json

import pytest
import torch

from dfkd_fast.acgkd.config import make_config
from dfkd_fast.acgkd.student import ProjectedStudent
from dfkd_fast.acgkd.trainer import make_trainer
from dfkd_fast.data.graphs import motif_dataset
from dfkd_fast.models.gnn import build_gnn
from dfkd_fast.runs import RunDir

TINY = dict(num_graphs=10, min_nodes=4, max_nodes=9, iterations=5, epochs=4, batch_size=4, checkpoint_every=2,
            eval_every=1, pictures=4)


@pytest.fixture(scope="module")
def graphs():
    return motif_dataset(24, seed=1).graphs


@pytest.fixture(scope="module")
def teacher(graphs):
    """A GCN-3-16 with BatchNorm statistics of real graphs (one training-mode pass)."""
    from torch_geometric.data import Batch

    torch.manual_seed(0)
    model = build_gnn("gcn-3-16", 6, 2)
    with torch.no_grad():
        model.train()(Batch.from_data_list(graphs))
    return model.eval()


def fit(method, teacher, graphs, path, max_steps=None, resume=False, **overrides):
    config = make_config(method, **{**TINY, **overrides})
    trainer = make_trainer(config, teacher, eval_graphs=graphs[:8], train_graphs=graphs[8:])
    run = RunDir(path, resume=resume)
    if resume:
        trainer.load_state_dict(run.load())
    return trainer, trainer.fit(run, max_steps=max_steps)


@pytest.mark.parametrize("method,extra", [
    ("acgkd", {}),
    ("acgkd", {"projector": "linear", "curriculum": "size", "adversarial": False, "resample": False,
               "symmetric": False, "straight_through": False}),
    ("acgkd", {"projector": "none", "curriculum": "none", "student": "gin-3-8", "edge_budget": 3}),
    ("gfkd", {}),
    ("real", {}),
])
def test_every_method_runs_and_writes_its_run(method, extra, teacher, graphs, tmp_path):
    trainer, summary = fit(method, teacher, graphs, tmp_path, **extra)
    assert summary["epochs"] == 4 and 0.0 <= summary["last_acc"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["phase"] == "kd"] == [1, 2, 3, 4]
    if method != "real":
        assert [r["step"] for r in records if r["phase"] == "generation"] == [2, 4, 5]
        assert (tmp_path / "pictures.png").stat().st_size > 0
    assert (tmp_path / "checkpoint.pt").is_file()
    assert isinstance(trainer.student, ProjectedStudent) == (method == "acgkd" and extra.get("projector") != "none")
    # the teacher the caller passed is untouched (the trainer works on its own frozen copy)
    assert all(p.requires_grad for p in teacher.parameters())


def test_acgkd_generation_lowers_its_loss(teacher, graphs, tmp_path):
    trainer, _ = fit("acgkd", teacher, graphs, tmp_path, iterations=40, epochs=1, checkpoint_every=20)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    generation = [r for r in records if r["phase"] == "generation"]
    assert generation[-1]["loss"] < generation[0]["loss"]


@pytest.mark.parametrize("method,stop", [("acgkd", 3), ("acgkd", 8), ("gfkd", 7)])
def test_resume_gives_the_uninterrupted_result(method, stop, teacher, graphs, tmp_path):
    """Stop mid-generation or mid-KD (work after the last checkpoint is lost), resume, compare with one run."""
    straight, _ = fit(method, teacher, graphs, tmp_path / "straight", eval_every=2)
    fit(method, teacher, graphs, tmp_path / "resumed", max_steps=stop, eval_every=2)
    resumed, _ = fit(method, teacher, graphs, tmp_path / "resumed", resume=True, eval_every=2)
    for name, value in straight.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()
    assert resumed.history == straight.history


def test_fused_and_reference_generation_steps_agree(teacher):
    steps = []
    for fused in (True, False):
        config = make_config("acgkd", **TINY, fused=fused)
        trainer = make_trainer(config, teacher)
        # compare the gradients: Adam's first step is sign-like and amplifies rounding in near-zero entries
        steps.append((trainer.generation_step(), trainer.graphs.edge_logits.grad.clone()))
    (a, grad_a), (b, grad_b) = steps
    torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    assert grad_a.abs().sum() > 0
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-6)
