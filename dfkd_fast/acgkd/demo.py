"""The graph demo of ``dfkd-fast demo`` (``make demo``): ACGKD end to end on the embedded motif dataset.

1. a GCN-5-64 teacher learns the motif dataset (house vs 5-cycle attached to a Barabasi-Albert tree) on 70% of it;
2. ACGKD distils a GIN-3-32 student from the teacher alone: Binary Concrete pseudo-graphs, the widened student on the
   teacher's classifier, curriculum and adversarial temperature; no training graph is read;
3. the student is scored on the held-out 30% real graphs.

Outputs under ``out_dir``: ``teacher/`` (teacher.pt, metrics), ``acgkd/`` (the ACGKD run: metrics.jsonl,
pictures.png of pseudo-graphs, student.pt) and ``real_graphs.png`` for comparison.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from dfkd_fast.acgkd.config import make_config
from dfkd_fast.acgkd.pictures import draw_pyg
from dfkd_fast.acgkd.teacher import TEACHER_FILE, dataset_and_split, save_model, train_model
from dfkd_fast.acgkd.methods import make_trainer
from dfkd_fast.data.graphs import MOTIFS
from dfkd_fast.models.gnn import build_gnn
from dfkd_fast.runs import RunDir, seed_everything

TEACHER, STUDENT = "gcn-5-64", "gin-3-32"
FULL = {"teacher_epochs": 60, "iterations": 100, "epochs": 60}
QUICK = {"teacher_epochs": 5, "iterations": 5, "epochs": 3}


def run_demo(out_dir: Path, quick: bool = False) -> dict:
    """Run the demo; returns ``name``, ``teacher_acc``, ``student_acc`` (fractions) and ``wall_s``."""
    start = time.perf_counter()
    seed_everything(0)  # the same numbers alone and after anything else that drew from the global RNGs
    settings = QUICK if quick else FULL
    out_dir = Path(out_dir)
    for sub in ("teacher", "acgkd"):  # the demo owns these: a rerun starts from scratch
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # graphs of ~20 nodes: intra-op threads only contend on small machines
    try:
        dataset, train, test = dataset_and_split(MOTIFS, None)
        draw_pyg(test[:16], out_dir / "real_graphs.png")
        seed_everything(0)  # before building: the demo's teacher is the same on every run
        teacher = build_gnn(TEACHER, dataset.num_features, dataset.num_classes)
        teacher_run = RunDir(out_dir / "teacher")
        teacher_acc = train_model(teacher, train, test, epochs=settings["teacher_epochs"], run=teacher_run)
        save_model(teacher_run.path / TEACHER_FILE, teacher, role="teacher", dataset=MOTIFS,
                   split={"seed": 29}, train_size=len(train), test_acc=teacher_acc)
        print(f"teacher {TEACHER} on {len(train)} motif graphs: held-out accuracy {teacher_acc:.2%} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)
        config = make_config("acgkd", student=STUDENT, num_graphs=len(train), iterations=settings["iterations"],
                             epochs=settings["epochs"], eval_every=10, checkpoint_every=25)
        trainer = make_trainer(config, teacher.eval(), eval_graphs=test)
        summary = trainer.fit(RunDir(out_dir / "acgkd"))
        save_model(out_dir / "acgkd" / "student.pt", trainer.selected_student(), role="student", method="acgkd",
                   dataset=MOTIFS, split={"seed": 29}, test_acc=summary["selected_acc"])
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start
    student_acc = summary["selected_acc"]  # student.pt: selected without labels
    print(f"ACGKD {STUDENT} student, no training graphs: held-out accuracy {student_acc:.2%} "
          f"({student_acc / teacher_acc:.0%} of the teacher); generation {summary['generation_s']:.0f}s, "
          f"KD {summary['kd_s']:.0f}s; wall time {wall:.0f}s; outputs in {out_dir}", flush=True)
    return {"name": f"ACGKD {TEACHER}->{STUDENT} motifs", "teacher_acc": teacher_acc,
            "student_acc": student_acc, "wall_s": wall}
