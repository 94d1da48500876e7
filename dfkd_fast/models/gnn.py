"""GCN-L-H and GIN-L-H with GFKD's semantics, on sparse PyG batches and on padded dense batches.

"GCN-5-64" is GFKD's naming: ``L - 1 = 4`` message-passing layers of width ``H = 64``, each followed by BatchNorm and
ReLU, a residual from the second layer on, a sum readout of the last layer, a ``Linear(H, classes)`` and Dropout(0.5)
on the logits (GFKD ``model/GCN/gcn_all.py``, ``model/GIN/gin_all_fast.py``). Parameter names and layouts match
GFKD's (DGL ``GraphConv`` weights are ``[in, out]`` here too), so a GFKD checkpoint loads with
:func:`load_gfkd_checkpoint`, which also maps GFKD's class and node-label numbering (first appearance in the dataset
files) to dfkd_fast's sorted one (``dfkd-fast teacher --task graph --import gfkd CKPT --dataset NAME``).

Both inputs run through the same code on a flat tensor of *valid* nodes:

* sparse: a PyG ``Batch``/``Data`` (``x [N, F]``, ``edge_index [2, E]``, ``batch [N]``, optional ``edge_weight``);
* dense: :class:`DenseGraphs` (``x [B, n, F]``, ``adj [B, n, n]``, ``mask [B, n]``), the pseudo-graph layout. Node
  features are gathered to the valid nodes once, and only message passing visits the padded ``[B, n, H]`` form.

So a BatchNorm only ever sees valid nodes: padding enters neither its statistics nor the teacher's BN-statistics
loss. Self-loops come from the data (one per node, GFKD's convention), not from the layers; ``adj[b, i, j]`` is the
weight of the edge ``i -> j`` (a soft Binary Concrete weight or 0/1).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.errors import DfkdError

KINDS = ("gcn", "gin")


class DenseGraphs(NamedTuple):
    """A padded batch: ``x [B, n, F]``, ``adj [B, n, n]`` (``adj[b, i, j]``: edge i -> j), ``mask [B, n]`` bool."""

    x: Tensor
    adj: Tensor
    mask: Tensor


def _finite_log(weight: Tensor) -> Tensor:
    """log(weight), -inf where weight = 0, with a finite gradient everywhere (no 0 * inf in backward)."""
    positive = weight > 0
    return torch.where(positive, torch.log(torch.where(positive, weight, 1.0)), float("-inf"))


class SparseStructure:
    """Message passing over an edge list (nodes are the rows of a flat ``[N, H]`` tensor)."""

    def __init__(self, edge_index: Tensor, edge_weight: Tensor | None, batch: Tensor, num_graphs: int) -> None:
        self.src, self.dst = edge_index
        self.weight = edge_weight
        self.batch = batch
        self.num_graphs = num_graphs
        self.num_nodes = batch.shape[0]
        self._norm: Tensor | None = None

    def _weight(self, like: Tensor) -> Tensor:
        return like.new_ones(self.src.shape[0]) if self.weight is None else self.weight.to(like.dtype)

    def aggregate(self, h: Tensor, normalize: bool = False) -> Tensor:
        """``out_j = sum_{i -> j} w_ij h_i``; with ``normalize``, GCN's ``w_ij / sqrt(deg_i deg_j)`` (in-degrees)."""
        w = self._normalized(h) if normalize else self._weight(h)
        return torch.zeros_like(h).index_add_(0, self.dst, h[self.src] * w[:, None])

    def _normalized(self, like: Tensor) -> Tensor:
        if self._norm is None:  # computed once per forward, shared by every layer
            w = self._weight(like)
            inv_sqrt = like.new_zeros(self.num_nodes).index_add_(0, self.dst, w).clamp(min=1).rsqrt()
            self._norm = inv_sqrt[self.src] * w * inv_sqrt[self.dst]
        return self._norm

    def attend(self, h: Tensor, score_src: Tensor, score_dst: Tensor, slope: float = 0.2) -> Tensor:
        """GAT aggregation: ``softmax_i(leaky_relu(s_i + d_j) + log w_ij)`` over the in-edges of each node j."""
        from torch_geometric.utils import softmax

        e = F.leaky_relu(score_src[self.src] + score_dst[self.dst], slope) + _finite_log(self._weight(h))
        alpha = softmax(e, self.dst, num_nodes=self.num_nodes)
        return torch.zeros_like(h).index_add_(0, self.dst, h[self.src] * alpha[:, None])

    def pool(self, h: Tensor) -> Tensor:
        return h.new_zeros(self.num_graphs, h.shape[1]).index_add_(0, self.batch, h)


class DenseStructure:
    """Message passing over a padded adjacency; node tensors are flat ``[N_valid, H]`` like the sparse ones."""

    def __init__(self, adj: Tensor, mask: Tensor) -> None:
        self.num_graphs, self.n = mask.shape
        self.index = mask.reshape(-1).nonzero().squeeze(1)  # flat slots of the valid nodes
        self.batch = torch.div(self.index, self.n, rounding_mode="floor")
        pairs = mask[:, :, None] & mask[:, None, :]
        # adj_t[b, j, i] = weight of i -> j, so that aggregation is one bmm; padding pairs are zeroed.
        self.adj_t = torch.where(pairs, adj, 0).transpose(1, 2)
        self.mask = mask
        self._norm: Tensor | None = None

    def pad(self, h: Tensor) -> Tensor:
        flat = h.new_zeros(self.num_graphs * self.n, h.shape[1]).index_copy(0, self.index, h)
        return flat.view(self.num_graphs, self.n, h.shape[1])

    def unpad(self, h: Tensor) -> Tensor:
        return h.reshape(self.num_graphs * self.n, -1).index_select(0, self.index)

    def aggregate(self, h: Tensor, normalize: bool = False) -> Tensor:
        a = self._normalized(h) if normalize else self.adj_t.to(h.dtype)
        return self.unpad(torch.bmm(a, self.pad(h)))

    def _normalized(self, like: Tensor) -> Tensor:
        if self._norm is None:  # computed once per forward, shared by every layer
            a = self.adj_t.to(like.dtype)
            inv_sqrt = a.sum(2).clamp(min=1).rsqrt()  # in-degree of j = row j of adj_t
            self._norm = inv_sqrt[:, :, None] * a * inv_sqrt[:, None, :]
        return self._norm

    def attend(self, h: Tensor, score_src: Tensor, score_dst: Tensor, slope: float = 0.2) -> Tensor:
        s = self.pad(score_src[:, None])[:, None, :, 0]  # [B, 1, n] source scores
        d = self.pad(score_dst[:, None])  # [B, n, 1] target scores
        log_w = _finite_log(self.adj_t.to(h.dtype))
        # a padded node attends to itself only, so that no softmax row is empty (its output is dropped)
        lonely = torch.diag_embed(~self.mask)
        log_w = torch.where(lonely, 0.0, log_w)
        alpha = torch.softmax(F.leaky_relu(s + d, slope) + log_w, dim=2)
        return self.unpad(torch.bmm(alpha, self.pad(h)))

    def pool(self, h: Tensor) -> Tensor:
        return self.pad(h).sum(1)


Structure = SparseStructure | DenseStructure


def structure_of(graph) -> tuple[Tensor, Structure]:
    """(flat valid-node features, structure) of a :class:`DenseGraphs` or a PyG ``Batch``/``Data``."""
    if isinstance(graph, DenseGraphs):
        s = DenseStructure(graph.adj, graph.mask)
        return s.unpad(graph.x), s
    batch = getattr(graph, "batch", None)
    if batch is None:
        batch = torch.zeros(graph.x.shape[0], dtype=torch.long, device=graph.x.device)
        num_graphs = 1
    else:
        num_graphs = int(graph.num_graphs)
    return graph.x, SparseStructure(graph.edge_index, getattr(graph, "edge_weight", None), batch, num_graphs)


class GraphConv(nn.Module):
    """GCN layer (DGL 0.4 ``GraphConv(norm=True)`` = PyG ``GCNConv`` on pre-added self-loops); weight is (in, out)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, h: Tensor, s: Structure) -> Tensor:
        return s.aggregate(h @ self.weight, normalize=True) + self.bias


class MLP(nn.Module):
    """GIN's two-layer MLP: Linear -> BN -> ReLU -> Linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.output_dim = out_dim
        self.linears = nn.ModuleList([nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)])
        self.norm_list = nn.ModuleList([nn.BatchNorm1d(hidden)])

    def forward(self, h: Tensor) -> Tensor:
        return self.linears[1](F.relu(self.norm_list[0](self.linears[0](h))))


class ApplyNodeFunc(nn.Module):
    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.mlp = mlp
        self.norm = nn.BatchNorm1d(mlp.output_dim)

    def forward(self, h: Tensor) -> Tensor:
        return F.relu(self.norm(self.mlp(h)))


class GINConv(nn.Module):
    """Sum-GIN with eps = 0: ``MLP(h_j + sum_{i -> j} w_ij h_i)`` (the data's self-loop makes it ``2 h_j + ...``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.apply_func = ApplyNodeFunc(MLP(in_dim, out_dim, out_dim))
        self.register_buffer("eps", torch.zeros(1))

    def forward(self, h: Tensor, s: Structure) -> Tensor:
        return self.apply_func((1 + self.eps) * h + s.aggregate(h))


class GNN(nn.Module):
    """GCN-L-H or GIN-L-H; ``forward(graph)`` takes a PyG batch or a :class:`DenseGraphs` and returns logits.

    Hooks for distillation: :meth:`embed` (node embeddings of the last layer and the graph structure),
    :meth:`readout` (sum pooling) and :meth:`classify` (the linear classifier and dropout).
    """

    def __init__(self, kind: str, num_layers: int, in_dim: int, hidden: int, num_classes: int,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"GNN: argument 'kind' must be one of {KINDS}, got {kind!r}")
        if num_layers < 2:
            raise ValueError(f"GNN: argument 'num_layers' must be >= 2 (L - 1 conv layers), got {num_layers}")
        self.kind, self.num_layers, self.in_dim, self.hidden, self.num_classes = (
            kind, num_layers, in_dim, hidden, num_classes)
        dims = [in_dim] + [hidden] * (num_layers - 1)
        layers = [GraphConv(a, b) if kind == "gcn" else GINConv(a, b) for a, b in zip(dims[:-1], dims[1:])]
        if kind == "gcn":
            self.gcnlayers = nn.ModuleList(layers)
            self.norms = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in layers])
        else:
            self.ginlayers = nn.ModuleList(layers)
        self.linears_prediction = nn.Linear(hidden, num_classes)
        self.drop = nn.Dropout(dropout)

    @property
    def spec(self) -> str:
        return f"{self.kind}-{self.num_layers}-{self.hidden}"

    def embed(self, graph) -> tuple[Tensor, Structure]:
        """Node embeddings ``[N_valid, H]`` of the last layer, and the structure to pool or project them with."""
        h, s = structure_of(graph)
        for i in range(self.num_layers - 1):
            if self.kind == "gcn":
                out = F.relu(self.norms[i](self.gcnlayers[i](h, s)))
            else:
                out = self.ginlayers[i](h, s)
            h = out + h if i > 0 else out
        return h, s

    @staticmethod
    def readout(h: Tensor, s: Structure) -> Tensor:
        """Sum pooling per graph: ``[num_graphs, H]``."""
        return s.pool(h)

    def classify(self, pooled: Tensor) -> Tensor:
        return self.drop(self.linears_prediction(pooled))

    def features(self, graph) -> tuple[Tensor, Tensor]:
        """(pooled feature ``[B, H]``, logits ``[B, C]``)."""
        pooled = self.readout(*self.embed(graph))
        return pooled, self.classify(pooled)

    def forward(self, graph) -> Tensor:
        return self.features(graph)[1]


_SPEC = re.compile(r"^(gcn|gin)-(\d+)-(\d+)$")


def parse_spec(spec: str) -> tuple[str, int, int]:
    """``"gcn-5-64"`` -> ``("gcn", 5, 64)``; a bad spec is a one-line :class:`DfkdError`."""
    m = _SPEC.match(spec.lower()) if isinstance(spec, str) else None
    if m is None or int(m.group(2)) < 2 or int(m.group(3)) < 1:
        raise DfkdError(f"model {spec!r} is not of the form gcn-L-H or gin-L-H with L >= 2 (e.g. gcn-5-64)")
    return m.group(1), int(m.group(2)), int(m.group(3))


def build_gnn(spec: str, in_dim: int, num_classes: int, dropout: float = 0.5) -> GNN:
    kind, layers, hidden = parse_spec(spec)
    return GNN(kind, layers, in_dim, hidden, num_classes, dropout)


def to_dense(graphs, max_nodes: int | None = None) -> DenseGraphs:
    """A PyG batch -> :class:`DenseGraphs` (its edge weights, or 1, become adjacency entries)."""
    from torch_geometric.utils import to_dense_adj, to_dense_batch

    x, mask = to_dense_batch(graphs.x, graphs.batch, max_num_nodes=max_nodes)
    adj = to_dense_adj(graphs.edge_index, graphs.batch, getattr(graphs, "edge_weight", None),
                       max_num_nodes=x.shape[1])
    return DenseGraphs(x, adj, mask)


def _gfkd_spec(state: dict) -> tuple[str, int, int, int, int]:
    """(kind, num_layers, in_dim, hidden, num_classes) of a GFKD GCN/GIN state_dict, read off its tensors."""
    if "gcnlayers.0.weight" in state:
        kind, first = "gcn", state["gcnlayers.0.weight"]
        in_dim, hidden = first.shape
        convs = len({k.split(".")[1] for k in state if k.startswith("gcnlayers.")})
    elif "ginlayers.0.apply_func.mlp.linears.0.weight" in state:
        kind, first = "gin", state["ginlayers.0.apply_func.mlp.linears.0.weight"]
        hidden, in_dim = first.shape
        convs = len({k.split(".")[1] for k in state if k.startswith("ginlayers.")})
    else:
        raise DfkdError("not a GFKD GCN/GIN checkpoint: no gcnlayers.0.weight or "
                        "ginlayers.0.apply_func.mlp.linears.0.weight")
    if "linears_prediction.weight" not in state:
        raise DfkdError("not a GFKD GCN/GIN checkpoint: no linears_prediction.weight")
    return kind, convs + 1, int(in_dim), int(hidden), int(state["linears_prediction.weight"].shape[0])


def load_gfkd_checkpoint(source, feature_order=None, class_order=None) -> GNN:
    """A GFKD GCN-L-H / GIN-L-H checkpoint (a path or a loaded object) as a dfkd_fast :class:`GNN` in eval mode.

    GFKD (DGL's ``GINDataset``) numbers a dataset's node labels and classes by first appearance in its files;
    dfkd_fast numbers them in sorted order. ``feature_order[g]`` / ``class_order[g]`` is the dfkd_fast index of GFKD's
    ``g``-th node label / class (:func:`dfkd_fast.data.graphs.gfkd_orders` reads both from the TU files); None keeps
    GFKD's numbering. The first layer's input rows and the classifier's rows are permuted accordingly, so the model
    gives the same prediction for the same graph. The file is read with ``weights_only=True`` (nothing is unpickled
    but tensors and plain containers); the layout is inferred from the keys (``gcnlayers.i.weight`` ``[in, out]``,
    ``norms.i.*``, ``linears_prediction.*``; or ``ginlayers.i.apply_func...``), a raw state_dict or one under
    ``model_state_dict`` / ``state_dict`` / ``model``. Any mismatch is a one-line :class:`DfkdError`.
    """
    from dfkd_fast.models import extract_state_dict
    from dfkd_fast.runs import load_checkpoint

    name = str(source) if not isinstance(source, dict) else "state"
    if not isinstance(source, dict):
        source = load_checkpoint(source)
    for key in ("model_state_dict", "model"):
        if isinstance(source, dict) and isinstance(source.get(key), dict):
            source = source[key]
    state = extract_state_dict(source, f"GFKD checkpoint {name}")
    try:
        kind, layers, in_dim, hidden, num_classes = _gfkd_spec(state)
    except DfkdError as exc:
        raise DfkdError(f"GFKD checkpoint {name}: {exc}") from None
    state = dict(state)  # reorder replaces tensors, never writes into the caller's
    first = "gcnlayers.0.weight" if kind == "gcn" else "ginlayers.0.apply_func.mlp.linears.0.weight"
    for order, size, what in ((feature_order, in_dim, "feature_order"), (class_order, num_classes, "class_order")):
        if order is not None and sorted(int(i) for i in order) != list(range(size)):
            raise DfkdError(f"load_gfkd_checkpoint: argument '{what}' must be a permutation of 0..{size - 1} (the "
                            f"checkpoint's {'node features' if what == 'feature_order' else 'classes'}), got "
                            f"{list(order)}")
    def reorder(key: str, order, dim: int) -> None:  # GFKD's g-th row along dim becomes row order[g]
        index = torch.as_tensor(list(order), dtype=torch.long)
        state[key] = torch.empty_like(state[key]).index_copy_(dim, index, state[key])

    if feature_order is not None:
        reorder(first, feature_order, 0 if kind == "gcn" else 1)  # GraphConv: [in, out]; nn.Linear: [out, in]
    if class_order is not None:
        for key in ("linears_prediction.weight", "linears_prediction.bias"):
            reorder(key, class_order, 0)
    model = GNN(kind, layers, in_dim, hidden, num_classes)
    _load_strict(model, state, name)
    return model.eval()


def _load_strict(model: nn.Module, state: dict, name: str) -> None:
    own = model.state_dict()
    for k in own:  # BN counters (and GIN's fixed eps) may be absent from old or DGL checkpoints
        if (k.endswith("num_batches_tracked") or k.endswith(".eps")) and k not in state:
            state[k] = own[k]
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        raise DfkdError(f"GFKD checkpoint {name} does not fit {model.spec}: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise DfkdError(f"GFKD checkpoint {name}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, {model.spec} "
                        f"needs {tuple(own[bad[0]].shape)}")
    model.load_state_dict(state)
