"""The dry rehearsal of bench/gpu_session.sh: every stage of the GPU command runs (or says why not) on a CPU machine,
so that the one lent GPU call is not the script's first run. About a minute on the 2-core machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_rehearsal_runs_every_stage(tmp_path, shared_data):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}  # a fresh pytest inside
    env.update(OUT=str(tmp_path), PYTHON=sys.executable, GPU_DATA=shared_data)
    proc = subprocess.run(["bash", "bench/gpu_session.sh", "--dry", "300"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=500)
    summary = (tmp_path / "summary.txt").read_text()
    assert proc.returncode == 0, f"{summary}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    lines = dict(line.split(": ", 1) for line in summary.splitlines() if ": " in line)
    for stage in ("env", "tests_cuda", "tests_fused", "bench_rest", "cifar"):
        assert lines.get(stage, "").startswith("ok"), f"stage {stage}: {lines.get(stage)}\n{summary}"
    assert lines["build"].startswith(("ok", "skipped")) and lines["sanitize"].startswith("skipped")
    assert lines["bench_key"].startswith("no cases selected")  # the key marker selects GPU sizes only

    cuda = ET.parse(tmp_path / "tests_cuda.xml").getroot().find("testsuite")
    assert int(cuda.get("tests")) > 0 and int(cuda.get("skipped")) == int(cuda.get("tests"))  # all skip on a CPU
    assert int(cuda.get("failures")) == 0 and int(cuda.get("errors")) == 0
    table = (tmp_path / "table.md").read_text()
    assert "**supcon_loss** on cpu" in table and "eager vs supcontrast" in table and "**cond_norm** on cpu" in table
    assert "torch" in (tmp_path / "versions.txt").read_text()

    curve = json.loads((tmp_path / "cifar10_resnet56_resnet20.json").read_text())
    assert curve["teacher_acc"] > 0.5 and curve["epochs"] and curve["epochs"][-1]["acc"] is not None
    assert (tmp_path / "cifar10_resnet56_resnet20.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "cifar_run").glob("**/*.pt"))  # $OUT carries the curve, not the models


def test_cifar_curve_without_matplotlib(tmp_path, monkeypatch):
    """The GPU machine's python may lack matplotlib: the curve is then drawn by the built-in PNG rasteriser."""
    import zlib

    from bench import cifar_curve

    lines = [{"epoch": 0, "teacher_acc": 0.93}, {"epoch": 1, "epoch_s": 20.0, "acc": 0.3},
             {"epoch": 2, "epoch_s": 25.0, "acc": 0.5}, {"epoch": 3, "epoch_s": 22.0}]  # the last one not evaluated
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert cifar_curve.main([str(metrics), str(tmp_path / "cifar_curve")]) == 0
    data = json.loads((tmp_path / "cifar_curve.json").read_text())
    assert data["teacher_acc"] == 0.93 and [e["wall_s"] for e in data["epochs"]] == [20.0, 45.0, 67.0]
    assert [e["acc"] for e in data["epochs"]] == [0.3, 0.5, None]
    png = (tmp_path / "cifar_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    idat = png.index(b"IDAT")
    raw = zlib.decompress(png[idat + 4:idat + 4 + int.from_bytes(png[idat - 4:idat], "big")])
    assert len(raw) == height * (1 + 3 * width)  # one filter byte and RGB pixels per row
    assert b"\x1f\x77\xb4" in raw and b"\xd6\x27\x28" in raw  # the curve (blue) and its points (red) were drawn
