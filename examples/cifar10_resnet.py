"""CIFAR-10 with CPSC-DFKD: the pretrained ResNet-56 teacher (93.39 %, akamaster) distilled into a ResNet-20 without
any training image, evaluated on the CIFAR-10 test batch.

    python examples/cifar10_resnet.py --data-root ../shared/data                 # on a GPU: the paper's recipe
    python examples/cifar10_resnet.py --data-root ../shared/data --smoke         # a few steps on a CPU

``--data-root`` must hold ``cifar-10-batches-py/test_batch`` and the teacher
``teachers/akamaster_pytorch_resnet_cifar10/resnet56-4bfd9763.th`` (or pass ``--teacher-ckpt``). These teachers
take ImageNet-normalised inputs; the loader records that, so the generator learns to produce images in that space
and the test images are normalised the same way. Other flags go to ``dfkd-fast cpsc`` (e.g. ``--epochs 200``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dfkd_fast._cli_args import accept_both_spellings
from dfkd_fast.cli import main as dfkd_fast

TEACHER = "teachers/akamaster_pytorch_resnet_cifar10/resnet56-4bfd9763.th"
SMOKE = ["--batch_size", "8", "--epochs", "1", "--epoch_itrs", "2", "--G_steps", "1", "--S_steps", "1", "--ngf", "16",
         "--eval_limit", "100", "--sample_every", "1"]


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding cifar-10-batches-py/ (and teachers/)")
    p.add_argument("--teacher-ckpt", default=None, help=f"default: DATA_ROOT/{TEACHER}")
    p.add_argument("--out", default="runs/examples/cifar10")
    p.add_argument("--smoke", action="store_true", help="a few tiny steps (CPU smoke test)")
    p.add_argument("--resume", action="store_true")
    args, extra = accept_both_spellings(p).parse_known_args(argv)
    start = time.perf_counter()
    if args.resume:
        rc = dfkd_fast(["cpsc", "--out", args.out, "--resume", *extra])
    else:
        ckpt = args.teacher_ckpt or str(Path(args.data_root) / TEACHER)
        rc = dfkd_fast(["cpsc", "--teacher", ckpt, "--teacher-arch", "resnet56", "--student", "resnet20",
                        "--dataset", "cifar10", "--data-root", args.data_root, "--out", args.out,
                        *(SMOKE if args.smoke else []), *extra])
    if rc:
        return rc
    records = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["epoch"], r.get("acc")) for r in records[1:] if "acc" in r]
    print(f"CIFAR-10 ResNet-56 ({records[0]['teacher_acc']:.2%} on the evaluated images) -> ResNet-20, data-free: "
          f"final {curve[-1][1]:.2%}; {time.perf_counter() - start:.0f} s (accuracy per epoch in "
          f"{Path(args.out) / 'metrics.jsonl'})")
    return 0


if __name__ == "__main__":
    sys.exit(run())
