"""Learnable pseudo-graphs: K graphs with edge logits and node-feature logits, sampled as a padded dense batch.

ACGKD's graphs (:class:`PseudoGraphs`) draw their edges with the Binary Concrete op
(:class:`dfkd_fast.nn.BinaryConcreteAdjacency`, which owns the (seed, offset) noise stream), under a sparsity budget
that plays the spatial-complexity parameter xi: at most ``floor(xi * pairs)`` edges per graph, or ``edge_budget``, or
``floor(mean_degree * nodes / 2)`` (the trainer's default: a mean degree that does not grow with the graph's size).
Node counts, labels and the feature parameterisation follow GFKD: ``n ~ U{min_nodes..max_nodes}``, labels uniform,
features ``softmax(Z)`` while optimising and ``one_hot(argmax Z)`` once exported.

What the budget and the temperature do in practice: where the budget binds, the logits choose *which* edges, not
*how many*; under xi = 0.1 it bound for nearly every graph (on MUTAG 130 of 131 graphs had more positive draws than the
budget), under a mean degree of 2 for about half of them (71 of 131). With
straight-through hard edges the forward graph is ``1[logit + noise > 0]`` at any temperature, which then only scales
the surrogate gradient. Inside the budget, ``degree_cap`` bounds each node's degree and ``connect_isolated`` leaves
no node alone (:func:`bound_degrees`): what the student's BatchNorm learns then resembles real graphs' degrees.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.models.gnn import DenseGraphs
from dfkd_fast.nn import BinaryConcreteAdjacency
from dfkd_fast.reference.binary_concrete import edge_budget, node_mask


def draw_counts_and_labels(num_graphs: int, min_nodes: int, max_nodes: int, num_classes: int,
                           seed: int) -> tuple[Tensor, Tensor]:
    """GFKD's node counts ``U{min..max}`` and uniform labels, from a private generator (the caller's RNG is kept)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(min_nodes, max_nodes + 1, (num_graphs,), generator=gen)
    labels = torch.randint(num_classes, (num_graphs,), generator=gen)
    return counts, labels


class PseudoGraphs(nn.Module):
    """ACGKD's pseudo-graphs: ``edge_logits [K, n, n]`` (upper triangle used when symmetric), ``feature_logits``.

    Node counts and labels are buffers (saved with the parameters); the sampler's stream is saved as its extra state.
    The edge budget is the trainer's: ``edge_budget`` if given, else ``xi``, else ``mean_degree`` (default 2);
    ``xi=None, mean_degree=None`` (and no ``edge_budget``) leaves the logits alone to choose how many edges.
    """

    def __init__(self, num_graphs: int, num_features: int, num_classes: int, *, min_nodes: int = 10,
                 max_nodes: int = 29, tau: float = 1.0, xi: float | None = None, edge_budget: int | None = None,
                 init_density: float = 0.1, symmetric: bool = True, straight_through: bool = True,
                 hard_features: bool = False, degree_cap: float | None = None, connect_isolated: bool = False,
                 mean_degree: float | None = 2.0, seed: int = 0, backend: str | None = None) -> None:
        super().__init__()
        self.degree_cap, self.connect_isolated = degree_cap, connect_isolated
        counts, labels = draw_counts_and_labels(num_graphs, min_nodes, max_nodes, num_classes, seed)
        self.register_buffer("num_nodes", counts)
        self.register_buffer("labels", labels)
        self.num_classes = num_classes
        self.hard_features = hard_features
        gen = torch.Generator().manual_seed(seed + 1)
        # logit-normal edge probabilities around init_density: a varied start at a real-looking density
        noise = torch.randn(num_graphs, max_nodes, max_nodes, generator=gen)
        self.edge_logits = nn.Parameter(math.log(init_density / (1 - init_density)) + noise)
        self.feature_logits = nn.Parameter(torch.randn(num_graphs, max_nodes, num_features, generator=gen))
        # one budget: an absolute edge count, else xi (a fraction of the pairs), else a mean degree (edges per node)
        ratio = xi if edge_budget is None else None
        per_node = (mean_degree / (2 if symmetric else 1)
                    if edge_budget is None and xi is None and mean_degree is not None else None)
        self.sampler = BinaryConcreteAdjacency(tau, seed=seed, symmetric=symmetric, hard=straight_through,
                                               self_loops=True, k=edge_budget, ratio=ratio, per_node=per_node,
                                               backend=backend)

    def __len__(self) -> int:
        return self.num_nodes.shape[0]

    def _layout(self, index: Tensor | None) -> tuple[Tensor, Tensor, int]:
        """(node mask [B, n], node counts [B], n) of the graphs ``index``, padded to the largest of them."""
        counts = self.num_nodes if index is None else self.num_nodes[index]
        n = int(counts.max()) if counts.numel() else 0
        return node_mask(counts, n).to(self.edge_logits.device), counts, n

    def feature_probabilities(self, index: Tensor | None = None) -> Tensor:
        """``softmax(Z)`` of the graphs ``index`` ``[B, n, F]``, padded like :meth:`sample`."""
        n = self._layout(index)[2]
        z = self.feature_logits if index is None else self.feature_logits[index]
        return torch.softmax(z[:, :n], dim=-1)

    def sample(self, index: Tensor | None = None, tau: float | None = None) -> DenseGraphs:
        """A differentiable Binary Concrete draw of the graphs ``index`` (all by default).

        Node features are ``softmax(Z)``, or with ``hard_features`` the one-hot ``argmax Z`` the student will see,
        with the softmax's straight-through gradient. The batch is padded to its largest graph only. Each call
        advances the sampler's noise stream.
        """
        mask, counts, n = self._layout(index)
        logits = self.edge_logits if index is None else self.edge_logits[index]
        adj = self.sampler(logits[:, :n, :n], counts, tau)
        if self.degree_cap is not None or self.connect_isolated:
            adj = bound_degrees(adj, logits[:, :n, :n].detach(), mask, self.degree_limits(counts),
                                self.connect_isolated, self.sampler.symmetric)
        x = self.feature_probabilities(index)
        if self.hard_features:
            x = F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype) + (x - x.detach())
        return DenseGraphs(x, adj, mask)

    def degree_limits(self, counts: Tensor) -> Tensor | None:
        """Per-graph degree bound ``max(2, ceil(degree_cap * mean degree of the budget))`` (None: no bound)."""
        s = self.sampler
        budget = edge_budget(counts, s.symmetric, s.k, s.ratio, s.per_node)
        if self.degree_cap is None or budget is None:
            return None
        mean_degree = budget.double() * (2 if s.symmetric else 1) / counts.double()
        return torch.ceil(self.degree_cap * mean_degree).clamp(min=2).long().to(self.edge_logits.device)

    @torch.no_grad()
    def hard_sample(self, index: Tensor | None = None) -> DenseGraphs:
        """A Bernoulli draw (0/1 edges within the budget) with one-hot ``argmax Z`` features: graphs as a student
        sees them. ``y > 1/2`` of the relaxed draw is exactly the hard Bernoulli sample, at any temperature."""
        graphs = self.sample(index)
        x = F.one_hot(graphs.x.argmax(-1), graphs.x.shape[-1]).to(graphs.x.dtype)  # argmax x = argmax Z
        return DenseGraphs(x, (graphs.adj > 0.5).to(graphs.adj.dtype), graphs.mask)

    @torch.no_grad()
    def edge_probabilities(self) -> Tensor:
        """``sigmoid(logits)`` on the candidate pairs (the Bernoulli law as tau -> 0), ignoring the budget."""
        mask = node_mask(self.num_nodes, self.edge_logits.shape[1]).to(self.edge_logits.device)
        p = torch.sigmoid(self.edge_logits)
        if self.sampler.symmetric:
            p = p.triu(1)
        pairs = mask[:, :, None] & mask[:, None, :] & ~torch.eye(p.shape[1], dtype=torch.bool, device=p.device)
        return torch.where(pairs, p, 0.0)


def bound_degrees(adj: Tensor, scores: Tensor, mask: Tensor, limit: Tensor | None, connect_isolated: bool,
                  symmetric: bool) -> Tensor:
    """Bound the degrees of sampled graphs ``adj [B, n, n]`` (self-loops on the diagonal) by ``limit [B]``, and join
    isolated nodes to their best partner.

    An edge ``i -> j`` survives the bound when it is among the ``limit`` highest-``scores`` edges leaving ``i`` *and*
    among those entering ``j`` (symmetric graphs: among both endpoints' edges), so every in- and out-degree is at most
    ``limit`` and dropped edges pass no gradient. A valid node left with no edge then gets a constant edge (both
    directions) to the valid node of highest score; a partner may end above the bound (one edge per node it
    joins).
    """
    n = adj.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=adj.device)
    if symmetric:
        scores = scores.triu(1) + scores.triu(1).transpose(1, 2)
    off = adj.masked_fill(eye, 0.0)
    present = off.detach() > 0
    if limit is not None:
        s = torch.where(present, scores, float("-inf"))
        # rank of j among i's edges (out) and of i among j's edges (in)
        out_rank = s.argsort(dim=2, descending=True, stable=True).argsort(dim=2, stable=True)
        in_rank = s.argsort(dim=1, descending=True, stable=True).argsort(dim=1, stable=True)
        keep = present & (out_rank < limit[:, None, None]) & (in_rank < limit[:, None, None])
        off = off * keep
        present = keep
    if connect_isolated:
        pairs = mask[:, :, None] & mask[:, None, :] & ~eye
        lonely = mask & ~(present.any(2) | present.any(1))
        partner = torch.where(pairs, scores, float("-inf")).argmax(2)  # [B, n]
        add = torch.zeros_like(present).scatter_(2, partner[:, :, None], lonely[:, :, None]) & pairs
        add = (add | add.transpose(1, 2)) & ~present
        off = off + add.to(off.dtype)
    return off + torch.diag_embed(torch.diagonal(adj, dim1=1, dim2=2))


def annealed_tau(step: int, steps: int, tau: float, tau_end: float | None) -> float:
    """Geometric annealing from ``tau`` (step 0) to ``tau_end`` (last step)."""
    if tau_end is None or steps <= 1:
        return tau
    return tau * math.exp(math.log(tau_end / tau) * min(step, steps - 1) / (steps - 1))


def feature_entropy(x: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of the node-feature distributions ``x [B, n, F]`` over valid nodes."""
    h = -(x * torch.log(x.clamp_min(1e-12))).sum(-1)
    return (h * mask).sum() / mask.sum().clamp(min=1)
