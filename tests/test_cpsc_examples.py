"""Smoke test of the CIFAR-10 example: the pretrained ResNet-56 teacher from ../shared/data distilled into a
ResNet-20 for a few CPU steps, evaluated on a strided subset of the real test batch."""

import json

import torch

from helpers import load_example


def test_cifar10_example_smoke(shared_data, tmp_path, capsys):
    out = tmp_path / "cifar10"
    assert load_example("cifar10_resnet").run(["--data-root", shared_data, "--smoke", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["teacher_acc"] > 0.85  # ResNet-56 on 100 test images (10 per class), ImageNet-normalised
    assert 0 <= records[1]["acc"] <= 1 and (out / "samples" / "epoch_0001.png").is_file()
    student = torch.load(out / "final_student.pt", weights_only=False)
    assert student["model"] == "resnet20" and student["mean"] == [0.485, 0.456, 0.406]
    assert "data-free: final" in capsys.readouterr().out
