"""Binary Concrete (relaxed Bernoulli) adjacency sampling for a padded batch of graphs.

For graph ``b`` with ``n_b`` nodes (padded to ``n``), edge logits ``l`` and temperature ``tau``:

    u ~ U(0, 1) (Philox, see reference.philox)       L = log u - log(1 - u)   (logistic noise, in float64)
    z = l + L                                         y = sigmoid(z / tau)

* ``symmetric``: only the strict upper triangle of ``logits`` and of the noise is used and mirrored, so the graph is
  undirected; otherwise every off-diagonal pair is its own directed edge.
* Only pairs of valid nodes (``i, j < n_b``, ``i != j``) can be edges; the rest of the output is 0.
* ``budget``: keep at most ``budget[b]`` edges (undirected pairs when symmetric) per graph: the largest relaxed
  values, ranked by ``z`` (monotone in ``y``, and strictly ordered where ``y`` saturates), ties to the lower index.
  Dropped edges are 0 and pass no gradient.
* ``hard``: the output is ``1[z > 0]`` (equivalently ``y > 1/2``, a Bernoulli(sigmoid(l)) draw) on kept edges,
  with the straight-through gradient of the relaxed value.
* ``self_loops``: the diagonal of valid nodes is 1 (constant; not counted in the budget).

Gradient: ``dl = dy * y * (1 - y) / tau`` on kept edges (both mirrored entries add up on the upper triangle).
"""

from __future__ import annotations

import torch

from dfkd_fast.reference._common import compute_dtype
from dfkd_fast.reference.philox import philox_uniform


def logistic_noise(shape: torch.Size, seed: int, offset: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``log u - log(1 - u)`` for Philox uniforms, evaluated in float64 and rounded once to ``dtype``."""
    numel = 1
    for size in shape:
        numel *= size
    u = philox_uniform(numel, seed, offset, device).to(torch.float64)
    return (torch.log(u) - torch.log1p(-u)).to(dtype).view(shape)


def node_mask(num_nodes: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] bool: which padded slots hold a node."""
    return torch.arange(n, device=num_nodes.device)[None, :] < num_nodes[:, None]


def pair_counts(num_nodes: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Number of candidate edges per graph: n(n-1)/2 undirected pairs, or n(n-1) directed ones."""
    pairs = num_nodes * (num_nodes - 1)
    return pairs // 2 if symmetric else pairs


def edge_budget(
    num_nodes: torch.Tensor, symmetric: bool, k: int | None = None, ratio: float | None = None
) -> torch.Tensor | None:
    """Per-graph edge budget [B] int64: ``k`` edges, or ``floor(ratio * pairs)``; None when neither is set."""
    if k is not None:
        return torch.full_like(num_nodes, k, dtype=torch.int64)
    if ratio is not None:
        return torch.floor(ratio * pair_counts(num_nodes, symmetric).to(torch.float64)).to(torch.int64)
    return None


def perturbed_logits(
    logits: torch.Tensor, num_nodes: torch.Tensor, seed: int, offset: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, valid, candidates): perturbed logits (mirrored if symmetric), valid pairs, and the pairs a budget ranks."""
    acc = compute_dtype(logits.dtype)
    n = logits.shape[-1]
    z = logits.to(acc) + logistic_noise(logits.shape, seed, offset, logits.device, acc)
    nodes = node_mask(num_nodes.to(logits.device), n)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=logits.device)
    valid = nodes[:, :, None] & nodes[:, None, :] & off_diagonal
    if not symmetric:
        return z, valid, valid
    upper = torch.ones(n, n, dtype=torch.bool, device=logits.device).triu(1)
    return torch.where(upper, z, z.transpose(1, 2)), valid, valid & upper


def budget_mask(z: torch.Tensor, candidates: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """The ``budget[b]`` candidates of largest ``z`` in each graph (ties to the lower flat index)."""
    batch = z.shape[0]
    scores = z.masked_fill(~candidates, float("-inf")).reshape(batch, -1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[1], device=z.device).expand(batch, -1)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < budget.to(z.device)[:, None]).view_as(candidates) & candidates


def binary_concrete_adjacency_reference(
    logits: torch.Tensor,
    num_nodes: torch.Tensor,
    tau: float,
    seed: int,
    offset: int = 0,
    symmetric: bool = True,
    hard: bool = False,
    self_loops: bool = False,
    budget: torch.Tensor | None = None,
) -> torch.Tensor:
    z, valid, candidates = perturbed_logits(logits, num_nodes, seed, offset, symmetric)
    kept = valid
    if budget is not None:
        kept = budget_mask(z, candidates, budget)
        if symmetric:
            kept = kept | kept.transpose(1, 2)
    out = torch.where(kept, torch.sigmoid(z / tau), 0.0)
    if hard:
        out = ((z > 0) & kept).to(out.dtype) + (out - out.detach())
    if self_loops:
        nodes = node_mask(num_nodes.to(logits.device), logits.shape[-1])
        out = out + torch.diag_embed(nodes.to(out.dtype))
    return out.to(logits.dtype)
