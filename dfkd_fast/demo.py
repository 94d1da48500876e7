"""``dfkd-fast demo`` (``make demo``): the README's main job on this machine, with embedded data only.

1. the environment report and a check of every op on every backend against its reference;
2. the image demo (:func:`dfkd_fast.cpsc.demo.run_demo`): a teacher trained on an embedded dataset, a smaller
   student distilled with CPSC-DFKD without touching the training images, accuracy on held-out real images;
3. the graph demo (:func:`dfkd_fast.acgkd.demo.run_demo`): the same with ACGKD on a generated motif dataset.

Each ``run_demo(out_dir, quick=False) -> dict`` returns ``name``, ``teacher_acc``, ``student_acc`` and ``wall_s``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from dfkd_fast import env
from dfkd_fast._deps import require

DEMOS = (("image", "dfkd_fast.cpsc.demo"), ("graph", "dfkd_fast.acgkd.demo"))
NEEDS = {"image": "sklearn", "graph": "torch_geometric"}  # checked before anything runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="directory for the demo runs (default: runs/demo)")
    parser.add_argument("--only", choices=[name for name, _ in DEMOS], help="run one demo only")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")


def run(args: argparse.Namespace) -> int:
    selected = [(name, module) for name, module in DEMOS if not args.only or name == args.only]
    for name, _ in selected:
        require(NEEDS[name], f"the {name} demo")
    rc = env.run(argparse.Namespace(no_check=False))
    results = []
    for name, module in selected:
        print(f"\n== {name} demo ==", flush=True)
        results.append(importlib.import_module(module).run_demo(Path(args.out) / name, quick=args.quick))
    if results:
        width = max(len(r["name"]) for r in results)
        print("\n" + f"{'demo':{width}s} {'teacher':>8s} {'student':>8s} {'ratio':>6s} {'wall':>8s}")
        for r in results:
            ratio = r["student_acc"] / r["teacher_acc"] if r["teacher_acc"] else float("nan")
            print(f"{r['name']:{width}s} {r['teacher_acc']:8.2%} {r['student_acc']:8.2%} {ratio:6.1%} "
                  f"{r['wall_s']:7.1f}s")
    return rc
