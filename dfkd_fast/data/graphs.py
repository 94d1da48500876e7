"""Graph-classification datasets: TU benchmarks read from local raw files, and an embedded motif dataset.

Graphs follow GFKD's conventions (Deng & Zhang, IJCAI 2021), which the teachers and students of
:mod:`dfkd_fast.acgkd` rely on:

* node features are one-hot node labels; a dataset without node labels (IMDB-BINARY) gets one-hot degrees;
* every graph carries one self-loop per node (``self_loops=True``), in real and pseudo-graphs alike;
* the train/test split is GFKD's: ``np.random.seed(29)``, shuffle the indices, the first ``floor(0.7 N)`` train.

The TU files are read directly (``<root>/<NAME>/raw/<NAME>_A.txt`` ...): nothing is downloaded and nothing is written
next to them. Each graph is a ``torch_geometric.data.Data`` with ``x`` (float32 one-hot), ``edge_index`` and ``y``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfkd_fast.errors import DfkdError

TU_DATASETS = ("MUTAG", "PTC_MR", "PROTEINS", "IMDB-BINARY", "NCI1")
MOTIFS = "motifs"
GFKD_SPLIT_SEED = 29


@dataclass
class GraphDataset:
    """A list of PyG graphs with the facts the trainers need."""

    name: str
    graphs: list
    num_features: int
    num_classes: int

    def __len__(self) -> int:
        return len(self.graphs)

    def subset(self, indices) -> list:
        return [self.graphs[int(i)] for i in indices]


def _read_ints(path: Path, columns: int = 1) -> np.ndarray:
    data = np.loadtxt(path, delimiter="," if columns > 1 else None, dtype=np.int64, ndmin=2)
    return data if columns > 1 else data[:, 0]


def load_tu(root: str | Path, name: str, *, self_loops: bool = True) -> GraphDataset:
    """Read the TU dataset ``name`` from ``root/<name>/raw`` (the layout of ``shared/data/TU``).

    Raises a one-line :class:`DfkdError` when the files are missing.
    """
    raw = Path(root) / name / "raw"
    required = [raw / f"{name}_{part}.txt" for part in ("A", "graph_indicator", "graph_labels")]
    missing = [p.name for p in required if not p.is_file()]
    if missing:
        raise DfkdError(f"--data-root {root}: no TU dataset {name} there (missing {', '.join(missing)} in {raw}); "
                        f"expected the layout <root>/{name}/raw/{name}_A.txt as in shared/data/TU")
    edges = _read_ints(required[0], columns=2) - 1  # the files are 1-based
    graph_of_node = _read_ints(required[1]) - 1
    _, labels = np.unique(_read_ints(required[2]), return_inverse=True)  # MUTAG's -1/1 -> 0/1
    num_nodes = len(graph_of_node)
    node_label_file = raw / f"{name}_node_labels.txt"
    if node_label_file.is_file():
        _, tags = np.unique(_read_ints(node_label_file), return_inverse=True)
    else:  # no node labels: the degree is the tag, as powerful-gnns does for the social datasets
        tags = np.bincount(edges[:, 0], minlength=num_nodes)
        _, tags = np.unique(tags, return_inverse=True)
    num_features = int(tags.max()) + 1
    features = np.eye(num_features, dtype=np.float32)[tags]
    starts = np.searchsorted(graph_of_node, np.arange(labels.shape[0] + 1))
    edge_graph = graph_of_node[edges[:, 0]]
    order = np.argsort(edge_graph, kind="stable")
    edges, edge_graph = edges[order], edge_graph[order]
    edge_starts = np.searchsorted(edge_graph, np.arange(labels.shape[0] + 1))
    graphs = []
    for g in range(labels.shape[0]):
        lo, hi = starts[g], starts[g + 1]
        e = edges[edge_starts[g]:edge_starts[g + 1]] - lo
        graphs.append(make_graph(torch.from_numpy(features[lo:hi]), torch.from_numpy(e.T.copy()), int(labels[g]),
                                 self_loops=self_loops))
    return GraphDataset(name, graphs, num_features, int(labels.max()) + 1)


def gfkd_orders(root: str | Path, name: str) -> tuple[list[int], list[int]]:
    """(feature_order, class_order): the dfkd_fast index of GFKD's ``g``-th node label and class.

    GFKD (DGL's ``GINDataset`` on the powerful-gnns files, which list the TU graphs in the same order) numbers node
    labels and classes by first appearance; :func:`load_tu` numbers them in sorted order. Both orders are read from
    the TU files here (``<NAME>_node_labels.txt`` in node order, ``<NAME>_graph_labels.txt`` in graph order). A
    dataset without node labels (IMDB-BINARY: degree features) has no such order: a one-line DfkdError.
    """
    raw = Path(root) / name / "raw"
    files = [raw / f"{name}_{part}.txt" for part in ("node_labels", "graph_labels")]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise DfkdError(f"--data-root {root}: cannot map GFKD's label order for {name}: missing {', '.join(missing)} "
                        f"in {raw} (datasets without node labels are not supported)")

    def order(values: np.ndarray) -> list[int]:
        first = list(dict.fromkeys(values.tolist()))  # first appearance
        ranks = {v: i for i, v in enumerate(sorted(first))}
        return [ranks[v] for v in first]

    return order(_read_ints(files[0])), order(_read_ints(files[1]))


def make_graph(x: torch.Tensor, edge_index: torch.Tensor, label: int, *, self_loops: bool = True):
    """A PyG ``Data`` with duplicate edges and existing self-loops removed, then one self-loop per node if asked."""
    from torch_geometric.data import Data
    from torch_geometric.utils import add_self_loops, coalesce, remove_self_loops

    n = x.shape[0]
    edge_index, _ = remove_self_loops(coalesce(edge_index.long(), num_nodes=n))
    if self_loops:
        edge_index, _ = add_self_loops(edge_index, num_nodes=n)
    return Data(x=x.float(), edge_index=edge_index, y=torch.tensor([label]))


def gfkd_split(num_graphs: int, seed: int = GFKD_SPLIT_SEED, train_fraction: float = 0.7) -> tuple[list, list]:
    """GFKD's random split: ``np.random.seed(seed)``, shuffle, first ``floor(train_fraction * N)`` are train."""
    indices = list(range(num_graphs))
    state = np.random.get_state()
    np.random.seed(seed)
    np.random.shuffle(indices)
    np.random.set_state(state)  # a library call must not reseed the caller's global stream
    cut = int(math.floor(train_fraction * num_graphs))
    return indices[:cut], indices[cut:]


def kfold_split(labels, folds: int, fold: int, seed: int = 0) -> tuple[list, list]:
    """Stratified k-fold: within each class, shuffle with ``seed`` and deal the graphs round-robin to the folds."""
    if not 0 <= fold < folds:
        raise DfkdError(f"--fold {fold} must be in [0, {folds}) for --folds {folds}")
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        assignment[members] = np.arange(len(members)) % folds
    return np.flatnonzero(assignment != fold).tolist(), np.flatnonzero(assignment == fold).tolist()


def split(dataset: GraphDataset, *, seed: int = GFKD_SPLIT_SEED, folds: int | None = None, fold: int = 0):
    """(train, test) index lists: GFKD's 70/30 split, or fold ``fold`` of a stratified ``folds``-fold split."""
    if folds is None:
        return gfkd_split(len(dataset), seed)
    return kfold_split([int(g.y) for g in dataset.graphs], folds, fold, seed)


# The motif dataset: a Barabasi-Albert base graph with one motif attached; the motif decides the class.
MOTIF_MAX_DEGREE = 6  # degree one-hot features 1..6+ (6 features)


def motif_dataset(num_graphs: int = 600, *, seed: int = 0, min_base: int = 8, max_base: int = 20,
                  self_loops: bool = True) -> GraphDataset:
    """An embedded two-class dataset built with PyG's graph and motif generators (no download).

    Each graph is a Barabasi-Albert base (``BAGraph`` with one edge per new node and ``min_base..max_base`` nodes: a
    tree, plus the odd isolated node PyG's generator leaves when a node draws itself) with one motif attached to a
    random base node by one edge: class 0 a house (``HouseMotif``: 5 nodes, 6 edges), class 1 a 5-cycle
    (``CycleMotif(5)``), as in BA-2Motifs. Node features are one-hot degrees (capped at ``MOTIF_MAX_DEGREE``).
    Labels are balanced; the same ``seed`` gives the same graphs (the generators' global RNGs are restored).
    """
    from torch_geometric.datasets.graph_generator import BAGraph
    from torch_geometric.datasets.motif_generator import CycleMotif, HouseMotif

    motifs = (HouseMotif(), CycleMotif(5))
    np_state = np.random.get_state()
    graphs = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            for i in range(num_graphs):
                label = i % 2
                base_nodes = int(torch.randint(min_base, max_base + 1, ()).item())
                base = BAGraph(num_nodes=base_nodes, num_edges=1)().edge_index
                motif = motifs[label]().edge_index + base_nodes
                anchor = int(torch.randint(base_nodes, ()).item())
                bridge = torch.tensor([[anchor, base_nodes], [base_nodes, anchor]])
                edge_index = torch.cat([base, motif, bridge], dim=1)
                n = base_nodes + 5
                degree = torch.bincount(edge_index[0], minlength=n).clamp(1, MOTIF_MAX_DEGREE) - 1
                x = torch.nn.functional.one_hot(degree, MOTIF_MAX_DEGREE)
                graphs.append(make_graph(x, edge_index, label, self_loops=self_loops))
            order = torch.randperm(num_graphs).tolist()
    finally:
        np.random.set_state(np_state)
    return GraphDataset(MOTIFS, [graphs[i] for i in order], MOTIF_MAX_DEGREE, 2)


@functools.lru_cache(maxsize=2)
def _default_motifs(self_loops: bool) -> GraphDataset:
    return motif_dataset(self_loops=self_loops)


def load_dataset(name: str, data_root: str | Path | None = None, *, self_loops: bool = True) -> GraphDataset:
    """``motifs`` (embedded; generated once per process) or a TU dataset from ``data_root``."""
    if name == MOTIFS:
        return _default_motifs(self_loops)
    if data_root is None:
        raise DfkdError(f"dataset {name} is read from disk: pass --data-root (a folder with {name}/raw/{name}_A.txt)")
    return load_tu(data_root, name, self_loops=self_loops)
