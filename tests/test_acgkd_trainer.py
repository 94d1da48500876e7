"""The trainers end to end at toy sizes: every method runs, writes its run directory and resumes bit for bit."""

import copy
import json

import pytest
import torch

from dfkd_fast.acgkd.config import make_config
from dfkd_fast.acgkd.student import ProjectedStudent
from dfkd_fast.acgkd.methods import make_trainer
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


class Constant(torch.nn.Module):
    """A collapsed student: the same logits for every graph."""

    def forward(self, graphs):
        n = graphs.mask.shape[0] if hasattr(graphs, "mask") else int(graphs.num_graphs)
        return torch.tensor([[2.0, -1.0]]).expand(n, 2)


def test_collapse_guard_fires_on_a_constant_student_only(teacher, graphs, capsys):
    from dfkd_fast.acgkd.trainer import collapse_message

    assert "class 0 for 100% of the 20" in collapse_message(torch.zeros(20, dtype=torch.long), 2, 0.9)
    assert collapse_message(torch.tensor([0, 1] * 10), 2, 0.9) is None
    assert collapse_message(torch.tensor([1] * 17 + [0] * 3), 2, 0.9) is None  # 85% < 90%
    shifted = collapse_message(torch.tensor([1] * 19 + [0]), 2, 0.9, teacher_preds=torch.tensor([1] * 14 + [0] * 6))
    assert "class 1 for 95% of the 20 evaluation graphs, the teacher for 70% (" in shifted
    from dfkd_fast.acgkd.teacher import train_model
    from dfkd_fast.acgkd.trainer import class_fractions, predictions, graph_batches

    good = build_gnn("gcn-3-16", 6, 2)
    assert train_model(good, graphs, graphs, epochs=30, seed=0) > 0.8  # a good student: fitted to these graphs
    trainer = make_trainer(make_config("acgkd", **TINY, ema=None), teacher, eval_graphs=graphs)
    trainer.student = good
    assert 0.3 < float(predictions(good, graph_batches(graphs)).float().mean()) < 0.7
    assert trainer.collapse_warnings() == []
    trainer.student = Constant()
    lines = trainer.collapse_warnings()
    assert len(lines) == 2 and all("\n" not in line and "collapsed" in line for line in lines)
    share = class_fractions(predictions(teacher, graph_batches(graphs)), 2)[0]
    assert all(f"class 0 for 100% of the {len(graphs)} evaluation graphs, the teacher for {share:.0%} (" in line
               for line in lines)
    # fit prints them, one line each, on stderr
    trainer = make_trainer(make_config("acgkd", **{**TINY, "epochs": 1}), teacher, eval_graphs=graphs)
    trainer.ema_student.forward = Constant().forward  # the weight average is what is evaluated
    trainer.fit()
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "warning" in line] == [line for line in err if "collapsed onto one class" in line]
    assert len([line for line in err if "collapsed" in line]) == 2


def with_labels(graphs, labels):
    out = []
    for g, y in zip(graphs, labels):
        g = g.clone()
        g.y = torch.tensor([int(y)])
        out.append(g)
    return out


@pytest.mark.parametrize("method", ["acgkd", "gfkd", "real"])
def test_selection_never_reads_test_labels(method, teacher, graphs):
    """Permuted (or absent) test labels change the reported accuracy, never which student is selected."""
    eval_graphs = graphs[:8]
    flipped = with_labels(eval_graphs, [1 - int(g.y) for g in eval_graphs])
    selected = []
    for evaluation in (eval_graphs, flipped, None):
        config = make_config(method, **{**TINY, "epochs": 6})
        trainer = make_trainer(config, teacher, eval_graphs=evaluation, train_graphs=graphs[8:])
        summary = trainer.fit()
        selected.append((trainer.selected, trainer.selected_state, summary))
    (sel_a, state_a, sum_a), (sel_b, state_b, sum_b), (sel_c, state_c, _) = selected
    assert sel_a == sel_b == sel_c and sel_a["epoch"] >= 1
    for name, value in state_a.items():
        torch.testing.assert_close(state_b[name], value, rtol=0, atol=0)
        torch.testing.assert_close(state_c[name], value, rtol=0, atol=0)
    assert sum_a["selected_acc"] + sum_b["selected_acc"] == pytest.approx(1.0)  # labels flipped: acc -> 1 - acc
    assert sum_a["selected_epoch"] == sel_a["epoch"]


def test_held_out_pseudo_graphs_are_never_trained_on(teacher):
    trainer = make_trainer(make_config("acgkd", **{**TINY, "holdout": 0.3, "epochs": 2}), teacher)
    trainer.fit(max_steps=TINY["iterations"])
    trainer.finish_generation()
    assert trainer.num_holdout == 4 and len(trainer.graphs) == 14
    assert int(trainer.curriculum.order.max()) < 10 and trainer.curriculum.order.numel() == 10
    assert trainer.selection_set[0].mask.shape[0] == 4
    assert len(trainer.selection_set) == trainer.config.selection_draws  # distinct edge draws of the same graphs
    assert not torch.equal(trainer.selection_set[0].adj, trainer.selection_set[1].adj)


@pytest.mark.parametrize("start,first", [(0.0, 1), (0.5, 4), (0.99, 8)])
def test_selection_considers_only_students_from_selection_start(start, first, teacher, monkeypatch):
    """A score that only falls makes the first candidate the selected one: it is the first epoch >= start."""
    from dfkd_fast.acgkd import trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "agreement_score", lambda *a: (calls.append(1) or 1.0 - len(calls), 0.0))
    trainer = make_trainer(make_config("acgkd", **{**TINY, "epochs": 8, "selection_start": start}), teacher)
    trainer.fit()
    assert trainer.selected["epoch"] == first and len(calls) == 8 - first + 1


def test_batch_order_and_sizes(teacher):
    shuffled = make_trainer(make_config("acgkd", **TINY), teacher)  # 10 graphs, batch 4: even batches 4, 3, 3
    pool = torch.arange(10)
    assert [b.numel() for b in shuffled._shuffled(pool)] == [4, 3, 3]
    assert torch.equal(torch.sort(torch.cat(shuffled._shuffled(pool))).values, pool)
    fixed = make_trainer(make_config("gfkd", **TINY), teacher)  # GFKD: one order, 32-style batches + remainder
    first, second = fixed._shuffled(pool), fixed._shuffled(pool)
    assert [b.tolist() for b in first] == [b.tolist() for b in second] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_recalibrated_bn_statistics_are_exact_averages(teacher):
    trainer = make_trainer(make_config("gfkd", **{**TINY, "iterations": 2}), teacher)
    trainer.fit(max_steps=2)
    trainer.finish_generation()
    trainer.recalibrate_bn()
    graphs = next(trainer.bn_graphs())
    student = copy.deepcopy(trainer.student)
    for m in student.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = 1.0  # one batch: running stats = that batch's statistics
    student.train()(graphs)
    for (name, a), b in zip(trainer.student.state_dict().items(), student.state_dict().values()):
        if "running" in name:
            torch.testing.assert_close(a, b, msg=name)


def test_no_import_cycle_between_trainer_and_gfkd():
    """gfkd imports trainer; trainer imports gfkd nowhere, not even lazily; importing gfkd first works."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import dfkd_fast.acgkd.trainer as trainer_module

    tree = ast.parse(Path(trainer_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not any(name and name.startswith(("dfkd_fast.acgkd.gfkd", "dfkd_fast.acgkd.methods")) for name in imported)
    code = ("import dfkd_fast.acgkd.gfkd as g, dfkd_fast.acgkd.methods as m; "
            "assert m.TRAINERS['gfkd'] is g.GFKDTrainer and m.TRAINERS['real'] is g.RealKDTrainer; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_weight_average_is_evaluated_and_saved(teacher, graphs):
    config = make_config("acgkd", **{**TINY, "epochs": 3, "ema": 0.5, "recalibrate_bn": False})
    trainer = make_trainer(config, teacher, eval_graphs=graphs)
    start = copy.deepcopy(trainer.student.state_dict())
    trainer.fit()
    assert trainer.eval_model is trainer.ema_student
    # after at least one step the average lies strictly between the start and the student, for trained weights
    name = next(k for k, v in trainer.student.named_parameters() if v.requires_grad)
    avg, raw, first = trainer.ema_student.state_dict()[name], trainer.student.state_dict()[name], start[name]
    assert not torch.equal(avg, raw) and not torch.equal(avg, first)
    assert trainer.selected_state is not None and set(trainer.selected_state) == set(start)
    gfkd = make_trainer(make_config("gfkd", **TINY), teacher)
    assert gfkd.ema_student is None and gfkd.eval_model is gfkd.student  # GFKD: the raw student
