"""Learnable pseudo-graphs: K graphs with edge logits and node-feature logits, sampled as a padded dense batch.

ACGKD's graphs (:class:`PseudoGraphs`) draw their edges with the Binary Concrete op
(:class:`dfkd_fast.nn.BinaryConcreteAdjacency`, which owns the (seed, offset) noise stream), under a sparsity budget
that plays the spatial-complexity parameter xi: at most ``floor(xi * pairs)`` (or ``edge_budget``) edges per graph.
Node counts, labels and the feature parameterisation follow GFKD: ``n ~ U{min_nodes..max_nodes}``, labels uniform,
features ``softmax(Z)`` while optimising and ``one_hot(argmax Z)`` once exported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.models.gnn import DenseGraphs
from dfkd_fast.nn import BinaryConcreteAdjacency
from dfkd_fast.reference.binary_concrete import node_mask


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
    """

    def __init__(self, num_graphs: int, num_features: int, num_classes: int, *, min_nodes: int = 10,
                 max_nodes: int = 29, tau: float = 1.0, xi: float | None = 0.1, edge_budget: int | None = None,
                 init_density: float = 0.1, symmetric: bool = True, straight_through: bool = True,
                 hard_features: bool = False, seed: int = 0, backend: str | None = None) -> None:
        super().__init__()
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
        ratio = xi if edge_budget is None else None
        self.sampler = BinaryConcreteAdjacency(tau, seed=seed, symmetric=symmetric, hard=straight_through,
                                               self_loops=True, k=edge_budget, ratio=ratio, backend=backend)

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
        x = self.feature_probabilities(index)
        if self.hard_features:
            x = F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype) + (x - x.detach())
        return DenseGraphs(x, adj, mask)

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


def annealed_tau(step: int, steps: int, tau: float, tau_end: float | None) -> float:
    """Geometric annealing from ``tau`` (step 0) to ``tau_end`` (last step)."""
    if tau_end is None or steps <= 1:
        return tau
    return tau * math.exp(math.log(tau_end / tau) * min(step, steps - 1) / (steps - 1))


def feature_entropy(x: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of the node-feature distributions ``x [B, n, F]`` over valid nodes."""
    h = -(x * torch.log(x.clamp_min(1e-12))).sum(-1)
    return (h * mask).sum() / mask.sum().clamp(min=1)
