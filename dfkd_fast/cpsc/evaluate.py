"""``dfkd-fast eval --task image``: the top-1 accuracy of a classifier checkpoint on a test set.

Reads any checkpoint :func:`dfkd_fast.models.load_weights` reads (dfkd_fast's teacher/student files, CMI's
``{dataset}_{model}.pth``, akamaster's ``resnetNN-*.th``, raw state_dicts). The model name and the input
normalisation come from the checkpoint when it records them.
"""

from __future__ import annotations

import argparse
import time

from dfkd_fast.cpsc.teacher import accuracy, load_classifier, resolve_device
from dfkd_fast.data.images import dataset_info, load_images


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", "--checkpoint", dest="ckpt", required=True, help="classifier checkpoint")
    parser.add_argument("--model", default=None, help="zoo model name (default: the one the checkpoint records)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", "--data_root", dest="data_root")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--limit", type=int, default=None, help="evaluate an evenly strided subset of this size")
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    data = dataset_info(args.dataset)
    device = resolve_device(args.device)
    model, norm, obj = load_classifier(args.model, args.ckpt, data, what="model")
    images = load_images(data.name, args.split, args.data_root, limit=args.limit)
    start = time.perf_counter()
    acc = accuracy(model.to(device), images, norm, device, args.batch_size)
    name = args.model or obj.get("model")
    print(f"{name} on {data.name} {args.split} ({len(images[1])} images): top-1 {acc:.2%} "
          f"[{time.perf_counter() - start:.1f} s]")
    return 0
