"""``dfkd-fast teacher --task image``: train a classifier on a real dataset; and loading classifiers for the others.

The recipe is upstream's ``train_teacher.py``: SGD (lr 0.1, momentum 0.9, weight decay 5e-4), cosine schedule over
the epochs, random crop (padding 4) + horizontal flip on CIFAR / Tiny-ImageNet (no augmentation on digits / MNIST).
The result, ``teacher.pt``, is in the CMI layout (``state_dict``) plus the model name, class count and the input
normalisation, so that ``dfkd-fast cpsc --ckpt`` and ``dfkd-fast eval`` need nothing else.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.data.images import ImageDataset, augment, batches, dataset_info, load_images, normalize
from dfkd_fast.errors import DfkdError
from dfkd_fast.models import build_model, canonical_name, load_weights, model_spec
from dfkd_fast.runs import RunDir, atomic_save, check_finite, progress, resume_options, say, seed_everything

Norm = tuple[tuple[float, ...], tuple[float, ...]]


def resolve_device(name: str | None) -> torch.device:
    """``auto`` / None: CUDA when available, else CPU; DfkdError for a device that does not exist here."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DfkdError(f"--device: {exc}") from None
    if device.type not in ("cpu", "cuda"):
        raise DfkdError(f"--device {name}: dfkd-fast runs on cpu or cuda devices, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DfkdError(f"--device {name}: CUDA is not available on this machine")
    return device


def input_norm(checkpoint: Mapping | None, model: str, data: ImageDataset) -> Norm:
    """A classifier's input normalisation: recorded in its checkpoint, else that of its public weights (the
    akamaster ResNets: ImageNet statistics), else the dataset's."""
    if checkpoint is not None and "mean" in checkpoint and "std" in checkpoint:
        return tuple(checkpoint["mean"]), tuple(checkpoint["std"])
    return model_spec(model).norm or (data.mean, data.std)


def load_classifier(model: str | None, ckpt: str | os.PathLike, data: ImageDataset, *,
                    what: str = "teacher") -> tuple[nn.Module, Norm, dict]:
    """Build ``model`` for ``data``'s classes and channels, load ``ckpt`` (any layout :func:`load_weights` reads).

    ``model`` may be None when the checkpoint records it (dfkd_fast checkpoints do). Returns (model in eval mode,
    input normalisation, checkpoint object).
    """
    from dfkd_fast.runs import load_checkpoint

    obj = load_checkpoint(ckpt)
    model = model or obj.get("model")
    if not model:
        raise DfkdError(f"{what} checkpoint {ckpt} does not record its model: pass the model name")
    net = build_model(model, data.num_classes, in_channels=data.channels)
    load_weights(net, obj, what=f"{what} {model}", name=str(ckpt))
    return net.eval(), input_norm(obj, model, data), obj


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[Tensor, Tensor], norm: Norm, device: torch.device,
             batch_size: int = 500) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode on uint8 images normalised with ``norm``."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in batches(*data, batch_size):
        correct += (model(normalize(x.to(device), *norm)).argmax(1) == y.to(device)).sum()
    model.train(was_training)
    return int(correct) / max(1, len(data[1]))


def train_classifier(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor] | None,
                     norm: Norm, *, epochs: int, batch_size: int = 64, lr: float = 0.1, momentum: float = 0.9,
                     weight_decay: float = 5e-4, augment_images: bool = False, device: torch.device,
                     run_dir: RunDir | None = None, log=print) -> dict:
    """Supervised training with upstream's teacher recipe; resumes from ``run_dir``'s checkpoint when it has one.

    The shuffling and augmentation draw from the global RNG, whose state the checkpoints carry.
    """
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    first = 1
    if run_dir is not None and run_dir.resume:
        state = run_dir.restore(lambda s: (model.load_state_dict(s["model"]), opt.load_state_dict(s["optimizer"])))
        first = state["epoch"] + 1
    acc, start = None, time.perf_counter()
    for epoch in range(first, epochs + 1):
        for group in opt.param_groups:  # CosineAnnealingLR(T_max=epochs), stepped before each epoch
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
        total = torch.zeros((), device=device)
        steps = 0
        for x, y in progress(batches(*train, batch_size, shuffle=True), total=-(-len(train[1]) // batch_size),
                             desc=f"teacher epoch {epoch}/{epochs}"):
            x, y = x.to(device), y.to(device)
            if augment_images:
                x = augment(x)
            loss = F.cross_entropy(model(normalize(x, *norm)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
        record = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "loss": float(total) / max(1, steps)}
        check_finite("teacher", f"epoch {epoch}", record, {"teacher": model}, {"loss": "--lr", "teacher": "--lr"})
        if test is not None:
            record["acc"] = acc = accuracy(model, test, norm, device)
        log(f"teacher epoch {epoch}/{epochs}: loss {record['loss']:.4f}"
            + (f" test acc {acc:.2%}" if acc is not None else ""))
        if run_dir is not None:
            run_dir.log(record)
            run_dir.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch})
    if test is not None and acc is None:
        acc = accuracy(model, test, norm, device)
    return {"acc": acc, "wall_s": time.perf_counter() - start}


def checkpoint_record(model: nn.Module, name: str, data: ImageDataset, norm: Norm, acc: float | None) -> dict:
    """A classifier checkpoint in the CMI layout plus what loading and evaluating it needs."""
    return {"state_dict": model.state_dict(), "model": name, "dataset": data.name, "num_classes": data.num_classes,
            "in_channels": data.channels, "mean": list(norm[0]), "std": list(norm[1]), "acc": acc}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="zoo model name (e.g. resnet34, wrn_40_2, lenet5); required unless --resume")
    parser.add_argument("--dataset", help="digits, mnist5k, mnist, cifar10, cifar100, tiny-imagenet; required unless "
                        "--resume")
    parser.add_argument("--data-root", "--data_root", dest="data_root", help="folder holding the dataset files")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop + flip (default: on for CIFAR / Tiny-ImageNet, off for digits / MNIST)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="run directory (default: runs/teacher-DATASET-MODEL)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")


def validate_args(args: argparse.Namespace, command: str = "teacher") -> None:
    """One-line errors for training options no run can use (an untrained or NaN teacher is never saved)."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise DfkdError(f"{command}: --{name} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise DfkdError(f"{command}: --lr must be a finite number > 0, got {args.lr}")
    for name in ("momentum", "weight_decay"):
        if not (math.isfinite(getattr(args, name, 0.0)) and getattr(args, name, 0.0) >= 0):
            raise DfkdError(f"{command}: --{name} must be a finite number >= 0, got {getattr(args, name)}")


SAVED_ARGS = ("model", "dataset", "data_root", "epochs", "batch_size", "lr", "momentum", "weight_decay", "augment",
              "seed", "device", "out", "resume")


def run(args: argparse.Namespace) -> int:
    out = args.out or f"runs/teacher-{args.dataset}-{args.model}"
    if args.resume:  # the saved options win; --epochs N larger than the saved value extends the run
        run_dir = RunDir(out, resume=True, command="teacher-image")
        saved = run_dir.read_config(required=("model", "dataset", "epochs"))
        changes = resume_options(args, saved, "teacher")
        args = argparse.Namespace(**{**{k: saved[k] for k in SAVED_ARGS if k in saved}, **changes,
                                     "out": out, "resume": True, "device": args.device, "data_root": args.data_root})
    for name in ("model", "dataset"):
        if getattr(args, name) is None:
            raise DfkdError(f"teacher: --{name} is required (or --resume with the --out of a run)")
    validate_args(args)
    data = dataset_info(args.dataset)
    spec = model_spec(args.model)  # unknown names fail before any data is read
    if spec.image_size is not None and spec.image_size != data.image_size:
        raise DfkdError(f"model {args.model} takes {spec.image_size}x{spec.image_size} images, dataset {data.name} "
                        f"has {data.image_size}x{data.image_size}")
    device = resolve_device(args.device)
    train, test = load_images(data.name, "train", args.data_root), load_images(data.name, "test", args.data_root)
    if not args.resume:
        run_dir = RunDir(out, command="teacher-image")
    if not run_dir.resume:
        run_dir.write_config({**{k: getattr(args, k) for k in SAVED_ARGS}, "world_size": 1,
                              "global_batch": args.batch_size})
    elif changes:
        run_dir.write_config({**saved, **changes})
    seed_everything(args.seed)
    model = build_model(args.model, data.num_classes, in_channels=data.channels)
    norm = spec.norm or (data.mean, data.std)
    aug = args.augment if args.augment is not None else data.channels == 3
    result = train_classifier(model, train, test, norm, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              momentum=args.momentum, weight_decay=args.weight_decay, augment_images=aug,
                              device=device, run_dir=run_dir, log=say)
    check_finite("teacher", "the end of training", None, {"teacher": model}, {"teacher": "--lr"})
    atomic_save(checkpoint_record(model, canonical_name(args.model), data, norm, result["acc"]),
                run_dir.path / "teacher.pt")
    run_dir.plot_metrics()
    say(f"teacher {args.model} on {data.name}: test accuracy {result['acc']:.2%} ({result['wall_s']:.0f} s); "
        f"saved {run_dir.path / 'teacher.pt'}")
    return 0
