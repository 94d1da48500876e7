"""``dfkd-fast acgkd``: distil a graph classifier without its training graphs (``--method gfkd`` for the baseline,
``--method real`` for KD with the real training graphs).

Every field of the method's config (:mod:`dfkd_fast.acgkd.config`) is an option of the same name. The run directory
holds config.json, metrics.jsonl, checkpoint.pt (atomic; ``--resume`` continues bit for bit), pictures.png (a grid
of pseudo-graphs), student.pt (the distilled student selected without labels: best agreement with the teacher on
held-out pseudo-graphs; readable by ``dfkd-fast eval --task graph``) and last_student.pt (the last epoch's).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from dfkd_fast.acgkd.config import CONFIGS, METHODS, make_config
from dfkd_fast.acgkd.teacher import dataset_and_split, load_teacher, save_model
from dfkd_fast.acgkd.methods import make_trainer
from dfkd_fast.data.graphs import MOTIFS
from dfkd_fast.errors import DfkdError
from dfkd_fast.runs import RunDir, resume_options, say

STUDENT_FILE = "student.pt"
GFKD_FAST_STRUCTURE = ("PROTEINS", "COLLAB", "REDDIT-BINARY")  # GFKD: structure lr 5.0 instead of 1.0
LAST_STUDENT_FILE = "last_student.pt"
_TYPES = {"int": int, "float": float, "str": str}


def _parse_optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _config_fields() -> dict[str, tuple[dataclasses.Field, dict[str, object]]]:
    """Every config field of every method, with each method's default."""
    fields: dict[str, tuple[dataclasses.Field, dict[str, object]]] = {}
    for method, cls in CONFIGS.items():
        for f in dataclasses.fields(cls):
            if f.name == "method":
                continue
            entry = fields.setdefault(f.name, (f, {}))
            entry[1][method] = f.default
    return fields


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", "--ckpt", "--checkpoint", dest="teacher",
                        help="teacher checkpoint (teacher.pt of `dfkd-fast teacher --task graph`)")
    parser.add_argument("--method", choices=METHODS, default="acgkd", help="acgkd (default), gfkd or real")
    parser.add_argument("--out", default="runs/acgkd", help="run directory")
    parser.add_argument("--data-root", help="folder with the teacher's TU dataset, to evaluate the student on its "
                        "real test graphs (not needed for the embedded motif dataset)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out with its saved config")
    group = parser.add_argument_group("method options (default: the method's own value)")
    for name, (f, defaults) in _config_fields().items():
        flag = "--" + name.replace("_", "-")
        values = set(map(repr, defaults.values()))
        shown = (f"default {next(iter(defaults.values()))}" if len(values) == 1
                 else ", ".join(f"{m}: {d}" for m, d in defaults.items()))
        help_text = f"{f.metadata['help']} ({shown})"
        type_name = str(f.type).replace(" | None", "")
        if type_name == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            kind = _TYPES[type_name]
            parse = _parse_optional(kind) if "None" in str(f.type) else kind
            group.add_argument(flag, type=parse, default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                               help=help_text)  # absent unless given: "none" can then mean None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise DfkdError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise DfkdError("--device cuda: no CUDA device is available")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    changes = {}
    if args.resume:  # the saved config wins: a resumed run must be the run that was started (--epochs may extend it)
        run_dir = RunDir(args.out, resume=True, command="acgkd")
        saved = run_dir.read_config(required=("config", "cli"))
        changes = resume_options(args, {**saved["config"], **saved["cli"]}, "acgkd", spell="-")
        options = {k: v for k, v in {**saved["config"], **changes}.items() if k != "method"}
        cli = saved["cli"]
    else:
        names = _config_fields()
        options = {k: getattr(args, k) for k in names if hasattr(args, k)}
        cli = {"teacher": args.teacher, "method": args.method, "data_root": args.data_root}
        if not args.teacher:
            raise DfkdError("--teacher is required (a teacher.pt from `dfkd-fast teacher --task graph`)")
    config = make_config(cli["method"], **options)
    teacher, meta = load_teacher(cli["teacher"], config.teacher_arch)
    if config.method == "gfkd" and "lr_structure" not in options and meta.get("dataset") in GFKD_FAST_STRUCTURE:
        config.lr_structure = 5.0  # GFKD's recipe on these datasets
    train, test = _real_graphs(meta, cli["data_root"], teacher, config.method)
    if config.num_graphs is None and train is None:
        config.num_graphs = int(meta.get("train_size") or 0) or None
        if config.num_graphs is None:
            raise DfkdError(f"{cli['teacher']} records no training-set size: pass --num-graphs")
    if not args.resume:  # created only now: a rejected configuration leaves no directory behind
        run_dir = RunDir(args.out, command="acgkd")
    if not run_dir.resume or changes:  # (a run stopped before its first checkpoint restarts from the start)
        run_dir.write_config({"config": dataclasses.asdict(config), "cli": cli, "world_size": 1,
                              "global_batch": config.batch_size})
    trainer = make_trainer(config, teacher, eval_graphs=test, train_graphs=train, device=_device(args.device))
    if run_dir.resume:
        run_dir.restore(trainer)
    summary = trainer.fit(run_dir)
    common = {"role": "student", "method": config.method, "dataset": meta.get("dataset"), "split": meta.get("split")}
    save_model(run_dir.path / STUDENT_FILE, trainer.selected_student(), **common, test_acc=summary["selected_acc"],
               selected_epoch=summary["selected_epoch"])
    save_model(run_dir.path / LAST_STUDENT_FILE, trainer.eval_model, **common, test_acc=summary["last_acc"])
    acc = "n/a (no test graphs)" if summary["last_acc"] is None else (
        f"selected (epoch {summary['selected_epoch']}) {summary['selected_acc']:.2%}, last {summary['last_acc']:.2%}, "
        f"best evaluated {summary['best_acc']:.2%}")
    run_dir.plot_metrics()
    say(f"{config.method}: {config.student} student from {teacher.spec} teacher: test accuracy {acc}; "
        f"generation {summary['generation_s']:.1f}s, KD {summary['kd_s']:.1f}s; wrote {run_dir.path / STUDENT_FILE}")
    return 0


def _real_graphs(meta: dict, data_root: str | None, teacher, method: str):
    """(train graphs or None, test graphs or None) of the teacher's dataset and split, where they can be read."""
    name = meta.get("dataset")
    if name is None or (name != MOTIFS and data_root is None):
        if method == "real":
            raise DfkdError("--method real trains on the teacher's real training graphs: pass --data-root")
        print("dfkd-fast acgkd: no --data-root: the student is distilled but not evaluated", file=sys.stderr)
        return None, None
    split = meta.get("split") or {}
    dataset, train, test = dataset_and_split(name, data_root, split_seed=split.get("seed", 29),
                                             folds=split.get("folds"), fold=split.get("fold", 0))
    if dataset.num_features != teacher.in_dim:
        raise DfkdError(f"{name} under {data_root} has {dataset.num_features} node features but the teacher "
                        f"takes {teacher.in_dim}: not the teacher's dataset")
    return (train if method == "real" else None), test
