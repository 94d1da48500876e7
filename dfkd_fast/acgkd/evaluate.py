"""``dfkd-fast eval --task graph``: accuracy of a graph teacher or student checkpoint on a real test split.

The dataset and split default to the ones recorded in the checkpoint (the teacher's); ``--split all`` scores every
graph of the dataset.
"""

from __future__ import annotations

import argparse

from dfkd_fast.acgkd.teacher import dataset_and_split, load_model
from dfkd_fast.acgkd.trainer import accuracy, graph_batches
from dfkd_fast.errors import DfkdError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", "--checkpoint", dest="checkpoint", required=True, help="teacher.pt or student.pt")
    parser.add_argument("--dataset", help="default: the checkpoint's dataset")
    parser.add_argument("--data-root", help="folder holding <NAME>/raw/ (TU datasets)")
    parser.add_argument("--split", choices=("test", "train", "all"), default="test")


def run(args: argparse.Namespace) -> int:
    model, meta = load_model(args.checkpoint)
    name = args.dataset or meta.get("dataset")
    if name is None:
        raise DfkdError(f"{args.checkpoint} records no dataset: pass --dataset")
    split = meta.get("split") or {}
    dataset, train, test = dataset_and_split(name, args.data_root, split_seed=split.get("seed", 29),
                                             folds=split.get("folds"), fold=split.get("fold", 0))
    if dataset.num_features != meta["in_dim"] or dataset.num_classes != meta["num_classes"]:
        raise DfkdError(f"{name} has {dataset.num_features} node features and {dataset.num_classes} classes but "
                        f"{args.checkpoint} expects {meta['in_dim']} and {meta['num_classes']}")
    graphs = {"test": test, "train": train, "all": dataset.graphs}[args.split]
    acc = accuracy(model, graph_batches(graphs))
    print(f"{meta['arch']} ({meta.get('role', 'model')}) on {name} {args.split} ({len(graphs)} graphs): "
          f"accuracy {acc:.2%}")
    return 0
