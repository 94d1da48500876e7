"""The image demo of ``make demo``: CPSC-DFKD end to end on a fresh machine, with embedded data only.

1. Train a teacher (a small CNN) on scikit-learn's 8x8 digits (1,347 training images).
2. Distil a 4x smaller student with CPSC-DFKD: the student sees only the conditional generator's images, never the
   training images. The recipe is the paper's (every term, weights, quirks, warm-up + cosine) at demo scale:
   a narrower generator, batch 64 and 15 x 10 iterations instead of 600 x 50.
3. Evaluate teacher and student on the 450 held-out real images; save a grid of generated samples.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from dfkd_fast.cpsc.config import CPSCConfig
from dfkd_fast.cpsc.teacher import checkpoint_record, train_classifier
from dfkd_fast.cpsc.trainer import CPSCTrainer
from dfkd_fast.data.images import dataset_info, load_images
from dfkd_fast.models import build_model
from dfkd_fast.runs import RunDir, atomic_save, seed_everything

DATASET, TEACHER, STUDENT = "digits", "small_cnn", "small_cnn_half"


def demo_config(quick: bool = False) -> CPSCConfig:
    """The paper's recipe at demo scale (``quick``: a shorter run for tests and smoke checks)."""
    cfg = CPSCConfig(teacher=TEACHER, student=STUDENT, dataset=DATASET, batch_size=64, ngf=32, epochs=15,
                     epoch_itrs=10, warmup_epochs=2, sample_every=5, seed=0)
    if quick:
        cfg = dataclasses.replace(cfg, batch_size=32, epochs=8, epoch_itrs=8, G_steps=3, sample_every=0)
    return cfg


def train_teacher(out_dir: Path | None, quick: bool = False, log=print) -> tuple[nn.Module, float, tuple]:
    """The demo's teacher on the digits training split; returns (teacher, held-out accuracy, (train, test))."""
    data = dataset_info(DATASET)
    train, test = load_images(DATASET, "train"), load_images(DATASET, "test")
    seed_everything(0)
    teacher = build_model(TEACHER, data.num_classes, in_channels=data.channels)
    norm = (data.mean, data.std)
    result = train_classifier(teacher, train, test, norm, epochs=8 if quick else 20, batch_size=64, lr=0.05,
                              device=torch.device("cpu"), log=lambda *a: None)
    if out_dir is not None:
        atomic_save(checkpoint_record(teacher, TEACHER, data, norm, result["acc"]), Path(out_dir) / "teacher.pt")
    log(f"teacher {TEACHER} trained on {len(train[1])} real digits: held-out accuracy {result['acc']:.2%} "
        f"({result['wall_s']:.0f} s)")
    return teacher.eval(), result["acc"], (train, test)


def distil(teacher: nn.Module, config: CPSCConfig, test: tuple[Tensor, Tensor], out_dir: Path | None = None,
           log=print) -> dict:
    """CPSC-DFKD from ``teacher`` into a fresh student; returns the trainer's summary (final accuracy ``acc``)."""
    data = dataset_info(config.dataset)
    seed_everything(config.seed)
    run_dir = RunDir(out_dir) if out_dir is not None else None
    if run_dir is not None:
        run_dir.write_config(config.to_dict())
    trainer = CPSCTrainer.from_config(config, teacher, in_channels=data.channels, image_size=data.image_size,
                                      norm=(data.mean, data.std), test_data=test, run_dir=run_dir, log=log)
    return trainer.fit()


def run_demo(out_dir: Path, quick: bool = False) -> dict:
    """Teacher on real digits, data-free CPSC-DFKD student, both evaluated on held-out digits (see module doc)."""
    out_dir = Path(out_dir)
    for sub in ("teacher.pt", "cpsc"):  # a fresh demo each time: this folder holds only the demo's own outputs
        path = out_dir / sub
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # These networks are tiny: one thread is fastest, and immune to the oversubscription that makes a busy
    # 2-core machine ~10x slower with two threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out_dir, quick)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, quick: bool) -> dict:
    start = time.perf_counter()
    seed_everything(0)  # the same numbers whatever ran before in this process
    teacher, teacher_acc, (_, test) = train_teacher(out_dir, quick)
    cfg = demo_config(quick)
    print(f"distilling {TEACHER} ({sum(p.numel() for p in teacher.parameters())} parameters) -> {STUDENT} with "
          f"CPSC-DFKD, no training images: {cfg.epochs} epochs x {cfg.epoch_itrs} iterations x "
          f"({cfg.G_steps} G + {cfg.S_steps} S steps), batch {cfg.batch_size}", flush=True)
    summary = distil(teacher, cfg, test, out_dir / "cpsc", log=lambda msg: print(msg, flush=True))
    wall = time.perf_counter() - start
    grids = sorted((out_dir / "cpsc" / "samples").glob("*.png"))
    print(f"teacher accuracy {teacher_acc:.2%}, student accuracy {summary['acc']:.2%} "
          f"({summary['acc'] / teacher_acc:.1%} of the teacher), {wall:.0f} s"
          + (f"; samples: {grids[-1]}" if grids else ""))
    return {"name": f"CPSC-DFKD digits {TEACHER} -> {STUDENT}", "teacher_acc": teacher_acc,
            "student_acc": summary["acc"], "student_best_acc": summary["best_acc"], "wall_s": wall}
