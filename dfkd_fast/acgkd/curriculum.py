"""Curriculum over pseudo-graphs: the student meets the easy graphs first and the whole set later.

ACGKD orders pseudo-graphs from easy to hard instead of presenting them at random (shared/notes/acgkd.md §3.5; the
paper's exact measure is not public, so the measure is configurable):

* ``confidence``: the teacher's probability of the graph's target label, high first;
* ``size``: node count, small first;
* ``density``: expected edge count over node pairs, sparse first;
* ``none``: no curriculum (ablation): every epoch sees every graph.

A linear pacing function gives the fraction of the ordered graphs in play at each KD epoch: ``start`` at epoch 0,
growing to 1 at ``ramp * epochs`` (Bengio et al. 2009's baby steps; CTKD ramps its temperature the same way).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dfkd_fast.acgkd.pseudo_graphs import PseudoGraphs


@torch.no_grad()
def difficulty(kind: str, graphs: PseudoGraphs, teacher: torch.nn.Module, probs: Tensor | None = None) -> Tensor:
    """A score per pseudo-graph, lower = easier (``probs``: the teacher's probabilities on a hard sample, if drawn)."""
    if kind == "size":
        return graphs.num_nodes.double()
    if kind == "density":
        p = graphs.edge_probabilities()
        n = graphs.num_nodes.to(p.device).double()
        pairs = n * (n - 1) / (2 if graphs.sampler.symmetric else 1)
        return p.double().sum((1, 2)) / pairs
    if kind == "confidence":
        probs = torch.softmax(teacher(graphs.hard_sample()), dim=1) if probs is None else probs
        return -probs.gather(1, graphs.labels.to(probs.device)[:, None]).squeeze(1).double()
    raise ValueError(f"difficulty: argument 'kind' must be size, density or confidence, got {kind!r}")


class Curriculum:
    """Easy-to-hard order of the pseudo-graphs and the linear pacing of how many are used per epoch."""

    def __init__(self, order: Tensor, epochs: int, start: float = 0.4, ramp: float = 0.5) -> None:
        self.order = order
        self.epochs, self.start, self.ramp = epochs, start, ramp

    @classmethod
    def build(cls, kind: str, graphs: PseudoGraphs, teacher: torch.nn.Module, epochs: int, start: float,
              ramp: float, *, count: int | None = None, balanced: bool = False) -> "Curriculum":
        """The order of the first ``count`` pseudo-graphs (all by default; the rest are held out).

        ``balanced``: the easiest graph of each class (the teacher's prediction), then the second easiest of each,
        and so on, so that every pool holds the classes in (nearly) equal shares."""
        count = len(graphs) if count is None else count
        if kind == "none":
            return cls(torch.arange(count), epochs, 1.0, 0.0)
        probs = torch.softmax(teacher(graphs.hard_sample()), dim=1) if kind == "confidence" or balanced else None
        order = torch.sort(difficulty(kind, graphs, teacher, probs).cpu(), stable=True).indices
        order = order[order < count]
        if balanced:
            classes = probs.argmax(1).cpu()[order]
            rank = torch.zeros_like(order)  # rank of each graph within its class, in difficulty order
            for c in classes.unique():
                members = classes == c
                rank[members] = torch.arange(int(members.sum()))
            order = order[torch.sort(rank, stable=True).indices]
        return cls(order, epochs, start, ramp)

    def fraction(self, epoch: int) -> float:
        full_at = self.ramp * self.epochs
        if full_at <= 0:
            return 1.0
        return min(1.0, self.start + (1.0 - self.start) * epoch / full_at)

    def pool(self, epoch: int) -> Tensor:
        """The pseudo-graph indices used in ``epoch``: the easiest ``ceil(fraction * K)``."""
        count = max(1, math.ceil(self.fraction(epoch) * self.order.numel()))
        return self.order[:count]

    def state_dict(self) -> dict:
        return {"order": self.order, "epochs": self.epochs, "start": self.start, "ramp": self.ramp}

    @classmethod
    def from_state(cls, state: dict) -> "Curriculum":
        return cls(state["order"], state["epochs"], state["start"], state["ramp"])
