"""``dfkd-fast teacher --task graph``: train a GCN/GIN teacher on a TU dataset or the embedded motif dataset, or
import a GFKD checkpoint (``--import gfkd CKPT --dataset NAME``: GFKD's class and node-label order mapped).

``--seed S`` seeds everything before the model is built: the same command gives the same weights.

Also the graph-model checkpoint format every graph command shares: ``{"kind": "dfkd_fast.graph_model", "arch",
"projector", "in_dim", "num_classes", ["teacher_hidden"], "state_dict", "dataset", "split", ...}``, written
atomically; :func:`load_model` / :func:`load_teacher` check it and explain any mismatch in one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from dfkd_fast.acgkd.student import describe, rebuild
from dfkd_fast.acgkd.trainer import accuracy, graph_batches
from dfkd_fast.data import graphs as graph_data
from dfkd_fast.errors import DfkdError
from dfkd_fast.models.gnn import GNN, build_gnn, parse_spec
from dfkd_fast.runs import (RunDir, atomic_save, check_finite, load_checkpoint, progress, resume_options, say,
                            seed_everything)

KIND = "dfkd_fast.graph_model"
TEACHER_FILE = "teacher.pt"


def save_model(path: str | Path, model: nn.Module, **meta) -> None:
    atomic_save({"kind": KIND, **describe(model), **meta, "state_dict": model.state_dict()}, path)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """A graph model written by :func:`save_model` and its metadata; anything else is a one-line DfkdError."""
    state = load_checkpoint(path)
    if state.get("kind") != KIND:
        raise DfkdError(f"{path} is not a dfkd-fast graph model checkpoint (no kind {KIND!r})")
    try:
        model = rebuild(state)
    except (KeyError, DfkdError) as exc:
        raise DfkdError(f"{path}: unusable model description ({exc})") from None
    expected = model.state_dict()
    for name, tensor in state["state_dict"].items():
        if name in expected and expected[name].shape != tensor.shape:
            raise DfkdError(f"{path}: tensor {name} has shape {tuple(tensor.shape)} but {state['arch']} "
                            f"(in_dim {state['in_dim']}, {state['num_classes']} classes) needs "
                            f"{tuple(expected[name].shape)}: the checkpoint's widths do not match its architecture")
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise DfkdError(f"{path}: state_dict does not fit {state['arch']} (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return model, state


def load_teacher(path: str | Path, expected_arch: str | None = None) -> tuple[GNN, dict]:
    """The teacher GNN of a checkpoint; ``expected_arch`` (e.g. the config's ``gcn-5-64``) must match it."""
    model, meta = load_model(path)
    if not isinstance(model, GNN):
        raise DfkdError(f"{path} holds a widened student ({meta['arch']} + {meta['projector']} projector), "
                        "not a teacher GNN")
    if expected_arch is not None:
        kind, layers, hidden = parse_spec(expected_arch)
        if (kind, layers) != (model.kind, model.num_layers) or hidden != model.hidden:
            differ = [what for what, same in (("kinds", kind == model.kind), ("depths", layers == model.num_layers),
                                              ("widths", hidden == model.hidden)) if not same]
            raise DfkdError(f"teacher checkpoint {path} is {model.spec} ({model.num_layers} layers, hidden width "
                            f"{model.hidden}) but the config says --teacher-arch {expected_arch} ({layers} layers, "
                            f"hidden width {hidden}): the {' and '.join(differ)} do not match")
    return model.eval(), meta


def dataset_and_split(name: str, data_root: str | None, *, split_seed: int = graph_data.GFKD_SPLIT_SEED,
                      folds: int | None = None, fold: int = 0):
    """(dataset, train graphs, test graphs) with GFKD's 70/30 split or a stratified fold."""
    dataset = graph_data.load_dataset(name, data_root)
    train, test = graph_data.split(dataset, seed=split_seed, folds=folds, fold=fold)
    return dataset, dataset.subset(train), dataset.subset(test)


def train_model(model: GNN, train_graphs: list, test_graphs: list, *, epochs: int = 200, lr: float = 0.01,
                batch_size: int = 32, seed: int = 0, run: RunDir | None = None, desc: str = "teacher") -> float:
    """Supervised training (Adam, lr x0.5 every 50 epochs, as powerful-gnns/GFKD); returns the final test accuracy.

    With ``run``, metrics go to metrics.jsonl every 10 epochs and a checkpoint makes the run resumable.
    """
    from torch_geometric.data import Batch

    seed_everything(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 50, 0.5)
    test_batches = graph_batches(test_graphs)
    start = 0
    if run is not None and run.resume:
        state = run.restore(lambda s: (model.load_state_dict(s["model"]), optimizer.load_state_dict(s["optimizer"]),
                                       scheduler.load_state_dict(s["scheduler"])))
        start = state["epoch"]
    gen = torch.Generator().manual_seed(seed)
    if start:
        gen.set_state(state["generator"])
    acc = accuracy(model, test_batches)
    for epoch in progress(range(start, epochs), total=epochs, initial=start, desc=desc):
        model.train()
        total = 0.0
        for index in torch.randperm(len(train_graphs), generator=gen).split(batch_size):
            batch = Batch.from_data_list([train_graphs[i] for i in index.tolist()])
            loss = torch.nn.functional.cross_entropy(model(batch), batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        scheduler.step()
        check_finite("teacher", f"epoch {epoch + 1}", {"loss": total}, {"teacher": model},
                     {"loss": "--lr", "teacher": "--lr"})
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            acc = accuracy(model, test_batches)
            if run is not None:
                run.log({"epoch": epoch + 1, "loss": total / len(train_graphs), "test_acc": acc})
                run.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "generator": gen.get_state()})
    return acc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=graph_data.MOTIFS,
                        help=f"{graph_data.MOTIFS} (embedded) or a TU dataset: {', '.join(graph_data.TU_DATASETS)}")
    parser.add_argument("--data-root", help="folder holding <NAME>/raw/<NAME>_A.txt (e.g. shared/data/TU)")
    parser.add_argument("--model", default="gcn-5-64", help="gcn-L-H or gin-L-H (default gcn-5-64)")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=graph_data.GFKD_SPLIT_SEED, help="GFKD's split seed (29)")
    parser.add_argument("--folds", type=int, help="stratified k-fold instead of GFKD's 70/30 split")
    parser.add_argument("--fold", type=int, default=0, help="which fold is the test set (with --folds)")
    parser.add_argument("--out", default="runs/teacher-graph", help="run directory (teacher.pt, metrics.jsonl)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--import", dest="import_from", nargs=2, metavar=("FORMAT", "CKPT"),
                        help="instead of training, import a checkpoint: 'gfkd CKPT' (a GFKD GCN/GIN .pth of "
                        "--dataset; its class and node-label numbering is mapped to dfkd_fast's from the TU files)")


def import_gfkd(path: str | Path, name: str, data_root: str | Path) -> GNN:
    """A GFKD checkpoint of TU dataset ``name`` as a dfkd_fast teacher, its orders mapped (see
    :func:`dfkd_fast.models.gnn.load_gfkd_checkpoint`)."""
    from dfkd_fast.models.gnn import load_gfkd_checkpoint

    if name == graph_data.MOTIFS or data_root is None:
        raise DfkdError("--import gfkd needs the checkpoint's TU dataset: pass --dataset NAME and --data-root")
    feature_order, class_order = graph_data.gfkd_orders(data_root, name)
    model = load_gfkd_checkpoint(path, feature_order, class_order)
    if model.in_dim != len(feature_order) or model.num_classes != len(class_order):
        raise DfkdError(f"{path} takes {model.in_dim} node features and {model.num_classes} classes but {name} has "
                        f"{len(feature_order)} node labels and {len(class_order)} classes: not a {name} checkpoint")
    return model


def _import(args: argparse.Namespace) -> int:
    kind, path = args.import_from
    if kind != "gfkd":
        raise DfkdError(f"--import: the only format is gfkd, got {kind!r}")
    model = import_gfkd(path, args.dataset, args.data_root)
    dataset, train, test = dataset_and_split(args.dataset, args.data_root, split_seed=args.split_seed,
                                             folds=args.folds, fold=args.fold)
    acc = accuracy(model, graph_batches(test))
    out = Path(args.out)
    save_model(out / TEACHER_FILE, model, role="teacher", dataset=args.dataset, source=f"gfkd:{path}",
               split={"seed": args.split_seed, "folds": args.folds, "fold": args.fold}, train_size=len(train),
               test_acc=acc)
    print(f"imported GFKD {model.spec} for {args.dataset}: test accuracy {acc:.2%} ({len(test)} graphs); "
          f"wrote {out / TEACHER_FILE}")
    return 0


def run(args: argparse.Namespace) -> int:
    from dfkd_fast.cpsc.teacher import validate_args

    if getattr(args, "import_from", None):
        return _import(args)
    if args.resume:  # the saved options win; --epochs N larger than the saved value extends the run
        run_dir = RunDir(args.out, resume=True, command="teacher-graph")
        saved = run_dir.read_config(required=("model", "dataset", "epochs"))
        changes = resume_options(args, saved, "teacher", spell="-")
        args = argparse.Namespace(**{**saved, **changes, "out": args.out, "resume": True,
                                     "data_root": args.data_root})
    validate_args(args, "teacher --task graph")
    parse_spec(args.model)
    dataset, train, test = dataset_and_split(args.dataset, args.data_root, split_seed=args.split_seed,
                                             folds=args.folds, fold=args.fold)
    if not args.resume:
        run_dir = RunDir(args.out, command="teacher-graph")
    if not run_dir.resume or changes:
        run_dir.write_config({**{k: v for k, v in vars(args).items() if k not in ("func", "given", "command", "task")},
                              "world_size": 1, "global_batch": args.batch_size})
    seed_everything(args.seed)  # before building: the initial weights are part of the seeded run
    model = build_gnn(args.model, dataset.num_features, dataset.num_classes)
    acc = train_model(model, train, test, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, run=run_dir)
    split = {"seed": args.split_seed, "folds": args.folds, "fold": args.fold}
    save_model(run_dir.path / TEACHER_FILE, model, role="teacher", dataset=args.dataset, split=split,
               train_size=len(train), test_acc=acc)
    run_dir.plot_metrics()
    say(f"teacher {args.model} on {args.dataset}: test accuracy {acc:.2%} ({len(test)} graphs); "
        f"wrote {run_dir.path / TEACHER_FILE}")
    return 0
