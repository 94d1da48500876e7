"""``dfkd-fast cpsc``: distil a classifier with CPSC-DFKD, without training data.

Flag names follow the upstream script (``--student --dataset --batch_size --epochs --epoch_itrs --G_steps --S_steps
--lr_G --lr_S --co_alpha --co_beta --co_gamma --co_eta --temp``; ``--batch-size`` etc. work too). ``--teacher`` is
the teacher *checkpoint*, as in ``dfkd-fast acgkd``; its model name comes from the checkpoint (dfkd-fast checkpoints
record it) or from ``--teacher-arch`` (CMI / akamaster / raw state_dicts). Upstream's ``--teacher MODEL --ckpt
PATH`` still works, with a deprecation line. The defaults are the paper's recipe (every term on, README weights).
``num_classes`` comes from the dataset. The run directory (``--out``) gets config.json, metrics.jsonl, a resumable
checkpoint per epoch, sample grids and the best/final student in the CMI layout; ``--resume`` continues a stopped
run bit for bit.

Multi-GPU: ``torchrun --nproc_per_node N -m dfkd_fast.cli cpsc ...`` (``--batch_size`` is per process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

from dfkd_fast.cpsc.config import AMP_MODES, COMPILE_MODES, G_OPTIMIZERS, IKD_FORMS, CPSCConfig
from dfkd_fast.cpsc.distributed import init_from_env
from dfkd_fast.cpsc.teacher import accuracy, load_classifier, resolve_device
from dfkd_fast.cpsc.trainer import CPSCTrainer
from dfkd_fast.data.images import dataset_info, load_images
from dfkd_fast.errors import DfkdError
from dfkd_fast.models import canonical_name, model_spec
from dfkd_fast.runs import RunDir, load_checkpoint, resume_options, say, seed_everything, set_rng_state

HELP = {
    "teacher": "teacher model name (resnet34, vgg11, wrn_40_2, resnet56, lenet5, ...; default: the one the --teacher "
               "checkpoint records)",
    "student": "student model name (resnet18, wrn_16_2, wrn_40_1, wrn_16_1, resnet20, lenet5_half, ...)",
    "dataset": "digits, mnist5k, mnist, cifar10, cifar100, tiny-imagenet (sets num_classes and the image size)",
    "G_steps": "generator steps per iteration", "S_steps": "student steps per iteration",
    "epoch_itrs": "iterations per epoch", "batch_size": "synthetic batch per step (per process)",
    "warmup_epochs": "linear student-LR warm-up epochs before the cosine",
    "ngf": "generator width (64 upstream; smaller for CPU runs)", "temp": "SupCon temperature",
    "loss_IKD": "logit-MSE term (alpha)", "loss_BN": "teacher BN-statistics term (beta)",
    "loss_SCL": "pseudo-supervised contrastive term (gamma)", "loss_CE": "cross-entropy to the condition labels (eta)",
    "ikd": "IKD form: auto = log forms on cifar10 (upstream), mse, log",
    "ce_on_logits": "fix: cross-entropy on logits (upstream: on softmax probabilities)",
    "generator_optimizer": "fresh_adam = upstream's new Adam per step (a sign update); adam = one persistent Adam",
    "freeze_student_bn_in_G": "fix: generator steps do not move the student's BN running statistics",
    "warmup_cosine_once": "fix: the first epoch after the warm-up gets the cosine factor once (warmup-scheduler "
                          ">= 0.3.2) instead of twice (the PyPI 0.3 upstream imports)",
    "fused": "dfkd_fast ops on the default backend (fused kernels on CUDA); --no-fused = reference ops",
    "amp": "autocast: auto = bf16 on CUDA, off on CPU", "channels_last": "channels_last memory format on CUDA",
    "compile": "torch.compile the loss computation of both steps",
    "compile_mode": "torch.compile mode (reduce-overhead: CUDA graphs)",
    "deterministic": "deterministic cuDNN kernels (slower; makes --resume bit-for-bit on a GPU too)",
    "eval_every": "epochs between test-set evaluations (0: never)",
    "sample_every": "epochs between PNG sample grids (0: never)", "ckpt_every": "epochs between checkpoints",
}
CHOICES = {"ikd": IKD_FORMS, "generator_optimizer": G_OPTIMIZERS, "amp": AMP_MODES, "compile_mode": COMPILE_MODES}
SKIP = {"extra"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(CPSCConfig):
        if field.name in SKIP:
            continue
        default = field.default
        help_text = f"{HELP.get(field.name, '')} (default: {default})".strip()
        if field.name == "teacher":  # the model name; --teacher itself is the checkpoint (one meaning everywhere)
            parser.add_argument("--teacher-arch", dest="teacher", metavar="MODEL", default=None, help=HELP["teacher"])
        elif isinstance(default, bool):
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(f"--{field.name}", type=type(default), default=default,
                                choices=CHOICES.get(field.name), help=help_text)
    parser.add_argument("--teacher", dest="teacher_path", metavar="CKPT",
                        help="teacher checkpoint (dfkd-fast teacher, CMI, akamaster or a raw state_dict)")
    parser.add_argument("--ckpt", "--checkpoint", dest="ckpt", help="the same as --teacher (upstream's spelling)")
    parser.add_argument("--data-root", "--data_root", dest="data_root",
                        help="folder holding the test set (for evaluation only; distillation reads no data)")
    parser.add_argument("--eval_limit", type=int, default=None, help="evaluate on an evenly strided test subset")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--out", default=None, help="run directory (default: runs/cpsc-DATASET-TEACHER-STUDENT)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


RUN_KEYS = ("ckpt", "data_root", "eval_limit")


def _is_model_name(text: str | None) -> bool:
    try:
        canonical_name(text)
        return True
    except DfkdError:
        return False


def resolve_teacher(args: argparse.Namespace) -> tuple[str, str]:
    """(teacher model name, checkpoint path) from ``--teacher PATH [--teacher-arch MODEL]``, or from upstream's
    ``--teacher MODEL --ckpt PATH`` (deprecated, one line on stderr)."""
    path, arch = args.teacher_path, args.teacher
    if args.ckpt:
        if path and not os.path.exists(path):  # upstream's form: --teacher MODEL --ckpt PATH
            legacy = canonical_name(path)  # an unknown name is reported as such
            if arch and canonical_name(arch) != legacy:
                raise DfkdError(f"cpsc: --teacher {path} and --teacher-arch {arch} disagree")
            print(f"dfkd-fast cpsc: `--teacher {path} --ckpt PATH` is deprecated: use `--teacher PATH` (and "
                  f"`--teacher-arch {path}` where the checkpoint does not record its model)", file=sys.stderr)
            arch, path = legacy, None
        if path and path != args.ckpt:
            raise DfkdError(f"cpsc: --teacher {path} and --ckpt {args.ckpt} name different checkpoints: pass one")
        path = args.ckpt
    elif path and not os.path.exists(path) and _is_model_name(path):
        raise DfkdError(f"cpsc: --teacher is the teacher checkpoint, and {path!r} is a model name: pass "
                        f"`--teacher PATH --teacher-arch {path}`")
    if not path:
        raise DfkdError("cpsc: --teacher (the teacher checkpoint) is required")
    if not arch:
        arch = load_checkpoint(path).get("model")
        if not arch:
            raise DfkdError(f"cpsc: teacher checkpoint {path} does not record its model: pass --teacher-arch MODEL")
    return canonical_name(arch), path


def _config_from_args(args: argparse.Namespace) -> tuple[CPSCConfig, dict]:
    arch, path = resolve_teacher(args)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(CPSCConfig) if f.name not in SKIP}
    values["teacher"] = arch
    extra = {k: getattr(args, k) for k in RUN_KEYS}
    extra["ckpt"] = path
    return CPSCConfig(**values).validate(), extra


def run(args: argparse.Namespace) -> int:
    dist = init_from_env(resolve_device(args.device))
    if args.resume:
        arch = args.teacher or (resolve_teacher(args)[0] if (args.teacher_path or args.ckpt) else None)
        if not (args.out or arch):
            raise DfkdError("cpsc --resume: pass --out (the run directory to continue)")
    else:
        cfg, extra = _config_from_args(args)
        arch = cfg.teacher
    out = args.out or f"runs/cpsc-{args.dataset}-{arch}-{args.student}"
    run_dir, changes = None, {}
    if args.resume:
        if not os.path.isfile(os.path.join(out, "config.json")):
            raise DfkdError(f"--resume: {out} holds no run (config.json missing)")
        if dist.is_main:
            run_dir = RunDir(out, resume=True, command="cpsc")
            stored = run_dir.read_config(required=("teacher", "student", "dataset", "epochs"))
        else:
            with open(os.path.join(out, "config.json")) as f:
                stored = json.load(f)
        changes = resume_options(args, stored, "cpsc")  # --epochs N > saved: extend the run
        if stored.get("world_size", dist.world_size) != dist.world_size:  # the global batch would change
            raise DfkdError(f"cpsc --resume: {out} was run by {stored['world_size']} processes, this is "
                            f"{dist.world_size}: resume it with the same number")
        stored = {**stored, **changes}
        cfg, extra = CPSCConfig.from_dict(stored).validate(), {k: stored.get(k) for k in RUN_KEYS}
    elif dist.is_main:
        run_dir = RunDir(out, command="cpsc")
    if not extra["ckpt"]:
        raise DfkdError("cpsc: --teacher (the teacher checkpoint) is required")
    if extra["eval_limit"] is not None and extra["eval_limit"] < 1:
        raise DfkdError(f"cpsc: --eval_limit must be >= 1, got {extra['eval_limit']}")
    data = dataset_info(cfg.dataset)
    for role in ("teacher", "student"):
        spec = model_spec(getattr(cfg, role))
        if spec.image_size is not None and spec.image_size != data.image_size:
            raise DfkdError(f"{role} {getattr(cfg, role)} takes {spec.image_size}x{spec.image_size} images, dataset "
                            f"{data.name} has {data.image_size}x{data.image_size}")
    test = None
    if cfg.eval_every and dist.is_main:
        if not data.embedded and extra["data_root"] is None:
            raise DfkdError(f"cpsc: evaluating on {data.name} needs --data-root (a folder holding {data.layout}); "
                            "or pass --eval_every 0")
        test = load_images(data.name, "test", extra["data_root"], limit=extra["eval_limit"])

    seed_everything(cfg.seed)
    teacher, norm, _ = load_classifier(cfg.teacher, extra["ckpt"], data, what="teacher")
    trainer = CPSCTrainer.from_config(cfg, teacher, in_channels=data.channels, image_size=data.image_size,
                                      norm=norm, test_data=test, run_dir=run_dir, dist=dist, log=say)
    # a run stopped before its first checkpoint restarts from the start (RunDir dropped its records)
    resuming = run_dir.resume if run_dir is not None else (args.resume and os.path.isfile(os.path.join(
        out, "checkpoint.pt")))
    config = {**cfg.to_dict(), **extra, "world_size": dist.world_size,
              "global_batch": cfg.batch_size * dist.world_size}
    if resuming:
        if run_dir is not None:
            run_dir.restore(trainer, map_location=dist.device)
        else:
            state = load_checkpoint(os.path.join(out, "checkpoint.pt"), dist.device)
            set_rng_state(state["rng"])
            trainer.load_state_dict(state)
        if changes and run_dir is not None:
            run_dir.write_config(config)
        if dist.is_main:
            extended = f" (extended to {cfg.epochs} epochs)" if changes else ""
            say(f"cpsc: resuming {out} after epoch {trainer.epoch}{extended}")
    elif run_dir is not None:
        run_dir.write_config(config)
        if test is not None:
            teacher_acc = accuracy(trainer.teacher, test, norm, trainer.device)
            run_dir.log({"epoch": 0, "teacher_acc": teacher_acc})
            say(f"cpsc: teacher {cfg.teacher} test accuracy {teacher_acc:.2%}")
    summary = trainer.fit()
    if dist.is_main:
        acc = f"final accuracy {summary['acc']:.2%}, best {summary['best_acc']:.2%} (epoch {summary['best_epoch']})" \
            if summary["acc"] is not None else "no evaluation"
        say(f"cpsc: {cfg.teacher} -> {cfg.student} on {data.name}: {acc}; {summary['wall_s']:.0f} s; "
            f"run directory {out}")
        if run_dir is not None:
            run_dir.plot_metrics()
    if dist.enabled:
        torch.distributed.destroy_process_group()
    return 0
