"""Fault injection: a CPSC and an ACGKD run are SIGKILLed at named points of their write path (before the first
checkpoint, inside a checkpoint write, half-way through a metrics line), then rerun or resumed; the final weights and
metrics.jsonl must equal those of an uninterrupted run, and no temporary or lock file may be left behind.

The crashes come from the ``DFKD_FAST_CRASH_AT=POINT[:N]`` hook of :mod:`dfkd_fast.runs` (the N-th pass of POINT in
that process sends it SIGKILL). Each crashing run is a subprocess; the reference and the last resume run in-process.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

import dfkd_fast
from dfkd_fast.cli import main

ROOT = str(Path(dfkd_fast.__file__).resolve().parent.parent)
TIMING = {"epoch_s", "images_per_s", "generation_s", "kd_s"}
CPSC_TINY = ["--batch_size", "8", "--nz", "8", "--ngf", "4", "--epochs", "3", "--epoch_itrs", "1", "--G_steps", "1",
             "--S_steps", "1", "--warmup_epochs", "1", "--sample_every", "2"]
ACGKD_TINY = ["--num-graphs", "8", "--min-nodes", "4", "--max-nodes", "8", "--iterations", "3", "--epochs", "2",
              "--checkpoint-every", "2", "--eval-every", "1", "--pictures", "0", "--student", "gin-3-8"]


def killed_at(point: str, argv: list[str]) -> None:
    """Run ``dfkd-fast argv`` in a subprocess that is SIGKILLed at ``point``; assert it died there."""
    env = {**os.environ, "DFKD_FAST_CRASH_AT": point, "PYTHONPATH": ROOT + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "dfkd_fast.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])


def records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in path.read_text().splitlines()]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_run(run: Path, reference: Path, models: list[str]) -> None:
    for name in models:
        a, b = weights(reference / name), weights(run / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert records(run / "metrics.jsonl") == records(reference / "metrics.jsonl")
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == "run.lock"]
    assert not leftovers, leftovers


def test_cpsc_survives_sigkill_anywhere(tmp_path, image_teacher):
    argv = ["cpsc", "--teacher-arch", "small_cnn_half", "--student", "small_cnn_half", "--dataset", "digits", "--teacher",
            image_teacher, *CPSC_TINY]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main([*argv, "--out", str(reference)]) == 0

    # after the teacher's epoch-0 record, before any checkpoint
    killed_at("record:1", [*argv, "--out", str(run)])
    assert not (run / "checkpoint.pt").exists() and (run / "metrics.jsonl").is_file()
    # the same command again restarts cleanly; it dies inside its first checkpoint write (a temporary file is left)
    killed_at("write:checkpoint.pt:1", [*argv, "--out", str(run)])
    assert not (run / "checkpoint.pt").exists() and list(run.glob(".checkpoint.pt.*.tmp"))
    # --resume of a run without a checkpoint restarts it; it dies half-way through the epoch-2 metrics line
    killed_at("record-partial:3", ["cpsc", "--out", str(run), "--resume"])
    assert (run / "checkpoint.pt").exists() and not (run / "metrics.jsonl").read_text().endswith("\n")
    assert main(["cpsc", "--out", str(run), "--resume"]) == 0
    assert_same_run(run, reference, ["final_student.pt", "final_generator.pt", "best_student.pt"])


def test_acgkd_survives_sigkill_anywhere(tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["teacher", "--task", "graph", "--dataset", "motifs", "--model", "gcn-3-16", "--epochs", "2",
                 "--out", str(teacher)]) == 0
    argv = ["acgkd", "--teacher", str(teacher / "teacher.pt"), *ACGKD_TINY]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main([*argv, "--out", str(reference)]) == 0

    # after the first generation record, before its checkpoint
    killed_at("record:1", [*argv, "--out", str(run)])
    assert not (run / "checkpoint.pt").exists()
    # rerun: dies inside the second checkpoint write (the first, of generation step 2, is on disk)
    killed_at("write:checkpoint.pt:2", [*argv, "--out", str(run)])
    assert (run / "checkpoint.pt").exists() and list(run.glob(".checkpoint.pt.*.tmp"))
    # resume from step 2: dies half-way through the first KD-epoch record
    killed_at("record-partial:2", ["acgkd", "--out", str(run), "--resume"])
    assert main(["acgkd", "--out", str(run), "--resume"]) == 0
    assert_same_run(run, reference, ["student.pt"])
