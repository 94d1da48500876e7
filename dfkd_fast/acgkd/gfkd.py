"""GFKD (Deng & Zhang, IJCAI 2021), the baseline ACGKD improves on, and KD with the real training graphs.

GFKD models every directed pair of a pseudo-graph as a Bernoulli(sigmoid(phi_ij)) variable (a dense, asymmetric
``phi [K, n, n]``) and estimates the structure gradient with ARM (Yin & Zhou, ICLR 2019), from two antithetic
forward passes and no backward:

    u ~ U(0, 1)^{n x n},   A1 = 1[u > sigmoid(-phi)],   A2 = 1[u < sigmoid(phi)]
    grad_phi ~= (f(A1) - f(A2)) * (u - 1/2),   f = per-graph CE + w_bn * (batch) BN-statistics loss

The node features ``softmax(Z)`` are learnt by backprop through the teacher on the deterministic structure
``1[sigmoid(phi) >= 1/2]``, with ``CE + w_bn * L_BN + w_entropy * H``. Adam (lr 1.0 structure, 0.01 features),
both lrs x0.1 every 700 steps; the snapshot with the lowest feature loss is exported as hard graphs with one-hot
features, and the student learns from them with KL at T = 2 only (shared/notes/acgkd.md §2.3, §2.5, §9).

This port keeps GFKD's algorithm, losses and schedule but runs it vectorised on the padded dense batch (GFKD itself
rebuilds every DGL graph in Python three times per step).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.acgkd import losses
from dfkd_fast.acgkd.config import GFKDConfig, RealKDConfig
from dfkd_fast.acgkd.pseudo_graphs import draw_counts_and_labels
from dfkd_fast.acgkd.trainer import GraphDistiller, graph_batches, select
from dfkd_fast.models.gnn import GNN, DenseGraphs
from dfkd_fast.nn import BNStatsLoss
from dfkd_fast.reference.binary_concrete import node_mask


@torch.no_grad()
def arm_gradient(phi: Tensor, f: Callable[[Tensor], Tensor], generator: torch.Generator | None = None) -> Tensor:
    """ARM estimate of ``d/d phi E_{A ~ Bernoulli(sigmoid(phi))}[f(A)]`` for ``phi [K, ...]`` and per-graph ``f``.

    Unbiased, from one uniform draw and two antithetic samples (Yin & Zhou 2019, eq. 5).
    """
    u = torch.rand(phi.shape, generator=generator, device=phi.device, dtype=phi.dtype)
    f1, f2 = f(u > torch.sigmoid(-phi)), f(u < torch.sigmoid(phi))
    return (f1 - f2).reshape(-1, *([1] * (phi.dim() - 1))) * (u - 0.5)


class BernoulliGraphs(nn.Module):
    """GFKD's pseudo-graphs: structure logits ``phi`` initialised to ``logit(U(0, 1))`` (density 0.5), features
    ``Z ~ N(0, 1)``; node counts ``U{min..max}`` and uniform labels."""

    def __init__(self, num_graphs: int, num_features: int, num_classes: int, *, min_nodes: int = 10,
                 max_nodes: int = 29, seed: int = 0) -> None:
        super().__init__()
        counts, labels = draw_counts_and_labels(num_graphs, min_nodes, max_nodes, num_classes, seed)
        self.register_buffer("num_nodes", counts)
        self.register_buffer("labels", labels)
        gen = torch.Generator().manual_seed(seed + 1)
        u = torch.rand(num_graphs, max_nodes, max_nodes, generator=gen).clamp(1e-6, 1 - 1e-6)
        self.structure = nn.Parameter(torch.logit(u))
        self.features = nn.Parameter(torch.randn(num_graphs, max_nodes, num_features, generator=gen))

    def pairs(self) -> tuple[Tensor, Tensor]:
        """(node mask [K, n], candidate directed pairs [K, n, n]: valid nodes, off the diagonal)."""
        n = self.structure.shape[1]
        mask = node_mask(self.num_nodes, n).to(self.structure.device)
        eye = torch.eye(n, dtype=torch.bool, device=mask.device)
        return mask, mask[:, :, None] & mask[:, None, :] & ~eye

    def graphs(self, edges: Tensor, features: Tensor) -> DenseGraphs:
        """A padded batch from 0/1 directed ``edges`` (restricted to the candidate pairs) plus one self-loop per node."""
        mask, pairs = self.pairs()
        adj = (edges & pairs).to(features.dtype) + torch.diag_embed(mask.to(features.dtype))
        return DenseGraphs(features, adj, mask)


class GFKDTrainer(GraphDistiller):
    """GFKD's generation (ARM on dense Bernoulli structure) and KD (a plain student, KL at T = 2)."""

    method = "gfkd"
    config: GFKDConfig

    def __init__(self, config: GFKDConfig, teacher: GNN, **kwargs) -> None:
        super().__init__(config, teacher, **kwargs)
        self._require_graph_count()
        cfg = config
        self.graphs = BernoulliGraphs(self.num_graphs + self.num_holdout, self.teacher.in_dim, self.teacher.num_classes,
                                      min_nodes=cfg.min_nodes, max_nodes=cfg.max_nodes, seed=cfg.seed).to(self.device)
        self.generator_optimizer = torch.optim.Adam([
            {"params": [self.graphs.structure], "lr": cfg.lr_structure},
            {"params": [self.graphs.features], "lr": cfg.lr_features}])
        self.generator_scheduler = torch.optim.lr_scheduler.StepLR(self.generator_optimizer, cfg.lr_decay_every, 0.1)
        self.bn_loss = BNStatsLoss(self.teacher, backend=self.backend)
        self.noise = torch.Generator(device=self.device).manual_seed(cfg.seed + 3)
        self.best_loss = float("inf")
        self.best: dict[str, Tensor] | None = None
        self._make_student_optimizer()

    def _f(self, graphs: DenseGraphs) -> Tensor:
        """GFKD's per-graph objective: CE of each graph + the batch's weighted BN-statistics loss."""
        logits = self.teacher(graphs)
        return F.cross_entropy(logits, self.graphs.labels, reduction="none") + self.config.w_bn * self.bn_loss()

    def generation_step(self) -> dict:
        cfg, g = self.config, self.graphs
        x = torch.softmax(g.features, dim=-1)
        # features: backprop through the teacher on the deterministic structure
        deterministic = g.graphs(torch.sigmoid(g.structure) >= 0.5, x)
        self.bn_loss.clear()
        logits = self.teacher(deterministic)
        terms = losses.generation_loss(logits, g.labels, self.bn_loss(), x, deterministic.mask, w_bn=cfg.w_bn,
                                       w_entropy=cfg.w_entropy)
        self.generator_optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        loss = float(terms["loss"].detach())
        if loss < self.best_loss:  # the snapshot GFKD exports (taken before this step's update)
            self.best_loss = loss
            self.best = {"structure": g.structure.detach().clone(), "features": g.features.detach().clone()}
        # structure: ARM from two antithetic Bernoulli draws, forward passes only
        features = x.detach()
        _, pairs = g.pairs()
        g.structure.grad = torch.where(
            pairs, arm_gradient(g.structure.detach(), lambda edges: self._f(g.graphs(edges, features)), self.noise),
            0.0)
        self.generator_optimizer.step()
        self.generator_scheduler.step()
        with torch.no_grad():
            hit = (logits.argmax(1) == g.labels).float().mean()
            density = (deterministic.adj.sum() - deterministic.mask.sum()) / pairs.sum()
        return {**{k: v.detach() for k, v in terms.items()}, "teacher_hit": hit, "density": density}

    def finish_generation(self) -> None:
        """Export the lowest-loss snapshot: hard graphs ``1[sigmoid(phi) >= 1/2]``, one-hot ``argmax Z`` features."""
        self.bn_loss.remove()
        best = self.best or {"structure": self.graphs.structure.detach(), "features": self.graphs.features.detach()}
        z = best["features"]
        x = F.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)
        self.exported = self.graphs.graphs(torch.sigmoid(best["structure"]) >= 0.5, x)
        if self.num_holdout:
            self.selection_set = [select(self.exported, self.holdout_index().to(self.device))]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "graphs": self.graphs.state_dict(),
                "generator_optimizer": self.generator_optimizer.state_dict(),
                "generator_scheduler": self.generator_scheduler.state_dict(), "noise": self.noise.get_state(),
                "best_loss": self.best_loss, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.graphs.load_state_dict(state["graphs"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.generator_scheduler.load_state_dict(state["generator_scheduler"])
        self.noise.set_state(state["noise"])
        self.best_loss, self.best = state["best_loss"], state["best"]
        if self.generation_done:
            self.bn_loss.remove()


class RealKDTrainer(GraphDistiller):
    """KD with the teacher's real training graphs (GFKD's upper-bound baseline): no generation, KL at T = 2."""

    method = "real"
    config: RealKDConfig

    def __init__(self, config: RealKDConfig, teacher: GNN, **kwargs) -> None:
        super().__init__(config, teacher, **kwargs)
        if not self.train_graphs:
            raise ValueError("RealKDTrainer: argument 'train_graphs' must hold the real training graphs")
        self.iterations = 0  # nothing to generate
        self.num_holdout = 0  # selection scores agreement with the teacher on the training graphs (no labels read)
        self.selection_set = ([b.to(self.device) for b in graph_batches(self.train_graphs)] if config.holdout > 0
                              else None)
        self._make_student_optimizer()

    def bn_graphs(self) -> Iterator:
        for batch in graph_batches(self.train_graphs, len(self.train_graphs)):
            yield batch.to(self.device)

    def kd_batches(self) -> Iterator:
        from torch_geometric.data import Batch

        for index in self._shuffled(torch.arange(len(self.train_graphs))):
            yield Batch.from_data_list([self.train_graphs[i] for i in index.tolist()]).to(self.device)
