"""The graph distillation trainers: ACGKD here, the GFKD baseline in :mod:`dfkd_fast.acgkd.gfkd`.

Every method runs the same two phases, one method each (:class:`GraphDistiller`):

1. ``generation_step`` (repeated ``iterations`` times): optimise the pseudo-graphs against the frozen teacher;
   then ``finish_generation`` freezes what the KD phase needs (ACGKD: the curriculum order);
2. ``kd_epoch`` (repeated ``epochs`` times): ``kd_step`` on each batch of ``kd_batches``, and ``evaluate`` on the real
   test graphs every ``eval_every`` epochs.

``fit`` runs both with a run directory (metrics.jsonl, atomic checkpoints, exact resume, a tqdm bar, pictures).
"""

from __future__ import annotations

import copy
import time
from typing import Iterator

import torch
from torch import Tensor, nn

from dfkd_fast.acgkd import losses
from dfkd_fast.acgkd.config import ACGKDConfig, DistillConfig
from dfkd_fast.acgkd.curriculum import Curriculum
from dfkd_fast.acgkd.pseudo_graphs import PseudoGraphs, annealed_tau
from dfkd_fast.acgkd.student import ProjectedStudent, build_student
from dfkd_fast.models.gnn import GNN, DenseGraphs
from dfkd_fast.nn import BNStatsLoss
from dfkd_fast.runs import RunDir, check_finite, divergence_guard, progress

# the flags to lower when a term or weights turn non-finite (the divergence guard's message)
GENERATION_FLAGS = {"loss": "--lr-structure / --lr-features", "ce": "--w-ce", "bn": "--w-bn",
                    "entropy": "--w-entropy", "tau": "--tau / --tau-end", "temperature": "--t-min / --t-range",
                    "pseudo-graph": "--lr-structure / --lr-features"}
KD_FLAGS = {"loss": "--lr / --w-feat / --w-kd", "kd": "--w-kd", "feature": "--w-feat",
            "temperature": "--t-min / --t-range", "student": "--lr"}


def graph_batches(graphs: list, batch_size: int = 256) -> list:
    """PyG batches of ``graphs`` in order (built once: evaluation reuses them)."""
    from torch_geometric.data import Batch

    return [Batch.from_data_list(graphs[i:i + batch_size]) for i in range(0, len(graphs), batch_size)]


@torch.no_grad()
def accuracy(model: nn.Module, batches: list, device: torch.device | str = "cpu") -> float:
    """Fraction of graphs whose argmax logit is the label (``model`` in eval mode; its mode is restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in batches:
        batch = batch.to(device)
        correct += int((model(batch).argmax(1) == batch.y).sum())
        total += int(batch.y.numel())
    model.train(was_training)
    return correct / max(total, 1)


def select(graphs: DenseGraphs, index: Tensor) -> DenseGraphs:
    """Rows ``index`` of a padded batch, trimmed to their largest graph."""
    mask = graphs.mask[index]
    n = int(mask.sum(1).max())
    return DenseGraphs(graphs.x[index, :n], graphs.adj[index, :n, :n], mask[:, :n])


class GraphDistiller:
    """Shared machinery; subclasses define the pseudo-graphs, the generation step and the KD step."""

    method = "base"

    def __init__(self, config: DistillConfig, teacher: GNN, *, eval_graphs: list | None = None,
                 train_graphs: list | None = None, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.backend = None if config.fused else "reference"
        # a private frozen copy: the BN-statistics hooks of one trainer never see another's forwards
        self.teacher = copy.deepcopy(teacher).to(self.device).eval().requires_grad_(False)
        self.eval_batches = graph_batches(eval_graphs) if eval_graphs else []
        self.train_graphs = train_graphs
        self.num_graphs = config.num_graphs or (len(train_graphs) if train_graphs else 0)
        torch.manual_seed(config.seed)
        self.student = self.build_student().to(self.device)
        self.temperature = None
        self.iterations = config.iterations  # generation steps to run
        self.step = 0  # generation steps done
        self.epoch = 0  # KD epochs done
        self.generation_done = False
        self.generation_s = 0.0
        self.kd_s = 0.0
        self.history: list[tuple[int, float]] = []  # (epoch, test accuracy)
        self.exported: DenseGraphs | None = None  # fixed graphs the KD phase reads (GFKD, or ACGKD without resample)
        self.batch_generator = torch.Generator().manual_seed(config.seed + 2)

    # -- to be defined by the methods -------------------------------------------------------------------------
    def build_student(self) -> nn.Module:
        return build_student(self.config.student, "none", self.teacher)

    def generation_step(self) -> dict:
        raise NotImplementedError

    def finish_generation(self) -> None:
        pass

    def kd_batches(self) -> Iterator:
        """Batches of the KD phase (default: the exported pseudo-graphs, reshuffled every epoch)."""
        for index in self._shuffled(torch.arange(self.exported.mask.shape[0])):
            yield select(self.exported, index)

    def kd_step(self, graphs) -> dict:
        """GFKD's KD: ``KL(teacher / T || student / T) * T^2`` only, T = ``kd_temperature``."""
        with torch.no_grad():
            teacher_logits = self.teacher(graphs)
        loss = losses.kd_loss(self.student(graphs), teacher_logits, self.config.kd_temperature)
        self._update(loss)
        return {"loss": loss.detach()}

    def pseudo_graphs_for_pictures(self) -> DenseGraphs | None:
        return self.exported

    # -- shared ------------------------------------------------------------------------------------------------
    def _require_graph_count(self) -> None:
        if self.num_graphs < 1:
            raise ValueError(f"{type(self).__name__}: config.num_graphs must be >= 1 (GFKD's recipe: the teacher's "
                             f"training-set size), got {self.config.num_graphs}")

    def _make_student_optimizer(self, extra: list | None = None) -> None:
        params = [p for p in self.student.parameters() if p.requires_grad] + (extra or [])
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr)
        epochs = self.config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: max(0.0, 1 - e / epochs))

    def _update(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _shuffled(self, pool: Tensor) -> list[Tensor]:
        order = pool[torch.randperm(pool.numel(), generator=self.batch_generator)]
        return list(order.to(self.device).split(self.config.batch_size))

    def kd_epoch(self) -> dict:
        self.student.train()
        totals: dict[str, Tensor] = {}
        count = 0
        for graphs in self.kd_batches():
            for k, v in self.kd_step(graphs).items():
                totals[k] = totals.get(k, 0.0) + v  # device tensors: one sync per epoch, not per step
            count += 1
        self.scheduler.step()
        return {k: float(v) / max(count, 1) for k, v in totals.items()}

    def evaluate(self) -> float | None:
        """Student accuracy on the real test graphs (None without test graphs)."""
        return accuracy(self.student, self.eval_batches, self.device) if self.eval_batches else None

    def fit(self, run: RunDir | None = None, *, max_steps: int | None = None) -> dict:
        """Generation then KD, resumable; ``max_steps`` stops after that many steps of this call (for tests)."""
        cfg = self.config
        done_here = 0
        bar = progress(total=self.iterations + cfg.epochs, initial=self.step + self.epoch, desc=self.method)

        def budget_left() -> bool:
            return max_steps is None or done_here < max_steps

        while self.step < self.iterations and budget_left():
            start = time.perf_counter()
            with divergence_guard(self.method, f"generation step {self.step + 1}", self._weights(), GENERATION_FLAGS):
                metrics = self.generation_step()
            self.generation_s += time.perf_counter() - start
            self.step += 1
            done_here += 1
            bar.update()
            if self.step % cfg.checkpoint_every == 0 or self.step == self.iterations:
                check_finite(self.method, f"generation step {self.step}", metrics, self._weights(), GENERATION_FLAGS)
                self._log(run, {"phase": "generation", "step": self.step, **metrics})
                bar.set_postfix(loss=float(metrics["loss"]))
                self._save(run)
        if not budget_left():
            return self.summary()
        if not self.generation_done:
            start = time.perf_counter()
            self.finish_generation()
            self.generation_s += time.perf_counter() - start
            self.generation_done = True
            if run is not None and cfg.pictures:
                self.save_pictures(run.path / "pictures.png")
            self._save(run)
        while self.epoch < cfg.epochs and budget_left():
            start = time.perf_counter()
            with divergence_guard(self.method, f"KD epoch {self.epoch + 1}", self._weights(), KD_FLAGS):
                metrics = self.kd_epoch()
            self.kd_s += time.perf_counter() - start
            self.epoch += 1
            done_here += 1
            bar.update()
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                check_finite(self.method, f"KD epoch {self.epoch}", metrics, self._weights(), KD_FLAGS)
                acc = self.evaluate()
                if acc is not None:
                    self.history.append((self.epoch, acc))
                    bar.set_postfix(acc=f"{acc:.3f}")
                self._log(run, {"phase": "kd", "epoch": self.epoch, "test_acc": acc, **metrics})
                self._save(run)
        bar.close()
        return self.summary()

    def _weights(self) -> dict:
        """What the divergence guard checks: the pseudo-graphs, the student and the adversarial temperature."""
        return {"pseudo-graph": getattr(self, "graphs", None), "student": self.student,
                "temperature": self.temperature}

    def summary(self) -> dict:
        accs = [a for _, a in self.history]
        return {"method": self.method, "generation_s": self.generation_s, "kd_s": self.kd_s,
                "last_acc": accs[-1] if accs else None, "best_acc": max(accs) if accs else None,
                "steps": self.step, "epochs": self.epoch}

    def _log(self, run: RunDir | None, record: dict) -> None:
        if run is not None:
            run.log({k: float(v) if isinstance(v, Tensor) else v for k, v in record.items()})

    def _save(self, run: RunDir | None) -> None:
        if run is not None:
            run.save(self.state_dict())

    def save_pictures(self, path) -> None:
        from dfkd_fast.acgkd.pictures import draw_graphs

        graphs = self.pseudo_graphs_for_pictures()
        if graphs is not None:
            count = min(self.config.pictures, graphs.mask.shape[0])
            draw_graphs(select(graphs, torch.arange(count, device=graphs.mask.device)), path)

    # -- checkpoints -------------------------------------------------------------------------------------------
    STUDENT_KEYS = ("student", "optimizer", "scheduler", "temperature")

    def load_generation(self, state: dict) -> None:
        """Take over another trainer's pseudo-graphs (its state_dict from before its KD phase) and keep this
        trainer's own student: one generation serves several students."""
        if state["epoch"] != 0:
            raise ValueError("load_generation: argument 'state' must be taken before the KD phase (epoch 0), "
                             f"got epoch {state['epoch']}")
        own = self.state_dict()
        self.load_state_dict({**state, **{k: own[k] for k in self.STUDENT_KEYS if k in own}})

    def state_dict(self) -> dict:
        return {
            "method": self.method, "step": self.step, "epoch": self.epoch, "generation_done": self.generation_done,
            "generation_s": self.generation_s, "kd_s": self.kd_s, "history": list(self.history),
            "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "exported": tuple(self.exported) if self.exported is not None else None,  # weights_only-loadable
            "batch_generator": self.batch_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.generation_done = state["step"], state["epoch"], state["generation_done"]
        self.generation_s, self.kd_s = state["generation_s"], state["kd_s"]
        self.history = [tuple(h) for h in state["history"]]
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.exported = DenseGraphs(*state["exported"]) if state["exported"] is not None else None
        self.batch_generator.set_state(state["batch_generator"])


class ACGKDTrainer(GraphDistiller):
    """ACGKD: Binary Concrete pseudo-graphs under the xi budget; a widened student on the teacher's classifier
    (feature MSE + KD); curriculum from easy to hard pseudo-graphs; an adversarial KD temperature."""

    method = "acgkd"
    config: ACGKDConfig

    def __init__(self, config: ACGKDConfig, teacher: GNN, **kwargs) -> None:
        super().__init__(config, teacher, **kwargs)
        self._require_graph_count()
        cfg = config
        self.graphs = PseudoGraphs(
            self.num_graphs, self.teacher.in_dim, self.teacher.num_classes, min_nodes=cfg.min_nodes,
            max_nodes=cfg.max_nodes, tau=cfg.tau, xi=cfg.xi, edge_budget=cfg.edge_budget,
            init_density=cfg.init_density, symmetric=cfg.symmetric, straight_through=cfg.straight_through,
            hard_features=cfg.hard_features, seed=cfg.seed, backend=self.backend).to(self.device)
        self.generator_optimizer = torch.optim.Adam([
            {"params": [self.graphs.edge_logits], "lr": cfg.lr_structure},
            {"params": [self.graphs.feature_logits], "lr": cfg.lr_features}])
        self.bn_loss = BNStatsLoss(self.teacher, backend=self.backend)
        self.temperature = (losses.AdversarialTemperature(cfg.t_min, cfg.t_range, cfg.kd_temperature).to(self.device)
                            if cfg.adversarial else None)
        self._make_student_optimizer(list(self.temperature.parameters()) if self.temperature else None)
        self.curriculum: Curriculum | None = None

    def build_student(self) -> nn.Module:
        return build_student(self.config.student, self.config.projector, self.teacher)

    def generation_objective(self, tau: float) -> tuple[dict, Tensor, DenseGraphs]:
        """(loss terms, teacher logits, sampled graphs) of one draw of every pseudo-graph at temperature ``tau``."""
        cfg = self.config
        graphs = self.graphs.sample(tau=tau)
        self.bn_loss.clear()
        logits = self.teacher(graphs)
        terms = losses.generation_loss(logits, self.graphs.labels, self.bn_loss(),
                                       self.graphs.feature_probabilities(), graphs.mask, w_ce=cfg.w_ce,
                                       w_bn=cfg.w_bn, w_entropy=cfg.w_entropy)
        return terms, logits, graphs

    def generation_step(self) -> dict:
        """One update of every pseudo-graph: sample, teacher forward, CE + BN statistics + entropy, backprop."""
        cfg = self.config
        tau = annealed_tau(self.step, cfg.iterations, cfg.tau, cfg.tau_end)
        terms, logits, graphs = self.generation_objective(tau)
        self.generator_optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.generator_optimizer.step()
        with torch.no_grad():
            hit = (logits.argmax(1) == self.graphs.labels).float().mean()
            edges = (graphs.adj > 0).sum() - graphs.mask.sum()  # directed entries without the self-loops
        return {**{k: v.detach() for k, v in terms.items()}, "tau": tau, "teacher_hit": hit,
                "edges_per_graph": edges / graphs.mask.shape[0] / (2 if cfg.symmetric else 1)}

    def finish_generation(self) -> None:
        """Order the pseudo-graphs from easy to hard for the curriculum; fix them unless KD resamples edges."""
        cfg = self.config
        self.bn_loss.remove()  # the KD phase needs no statistics
        self.curriculum = Curriculum.build(cfg.curriculum, self.graphs, self.teacher, cfg.epochs,
                                           cfg.curriculum_start, cfg.curriculum_ramp)
        if not cfg.resample:
            self.exported = self.graphs.hard_sample()

    def kd_batches(self) -> Iterator[DenseGraphs]:
        for index in self._shuffled(self.curriculum.pool(self.epoch)):
            yield self.graphs.hard_sample(index) if self.exported is None else select(self.exported, index)

    def kd_step(self, graphs: DenseGraphs) -> dict:
        """``w_feat * MSE(projected student feature, teacher feature) + w_kd * KD(tau_adv)``."""
        cfg = self.config
        with torch.no_grad():
            teacher_feature, teacher_logits = self.teacher.features(graphs)
        if isinstance(self.student, ProjectedStudent):
            student_feature, student_logits = self.student.features(graphs)
            feat = losses.feature_loss(student_feature, teacher_feature)
        else:
            student_logits, feat = self.student(graphs), torch.zeros((), device=self.device)
        if self.temperature is not None:
            t = self.temperature(losses.cosine_ramp(self.epoch, cfg.reversal_ramp, cfg.reversal_max))
        else:
            t = torch.tensor(cfg.kd_temperature, device=self.device)
        kd = losses.kd_loss(student_logits, teacher_logits, t)
        loss = cfg.w_feat * feat + cfg.w_kd * kd
        self._update(loss)
        return {"loss": loss.detach(), "feature": feat.detach(), "kd": kd.detach(), "temperature": t.detach()}

    def kd_epoch(self) -> dict:
        return {**super().kd_epoch(), "pool": self.curriculum.fraction(self.epoch)}

    def pseudo_graphs_for_pictures(self) -> DenseGraphs:
        offset = self.graphs.sampler.offset  # drawing pictures must not shift the training stream
        graphs = self.graphs.hard_sample(torch.arange(min(self.config.pictures, len(self.graphs))))
        self.graphs.sampler.offset = offset
        return graphs

    def state_dict(self) -> dict:
        return {**super().state_dict(), "graphs": self.graphs.state_dict(),
                "generator_optimizer": self.generator_optimizer.state_dict(),
                "temperature": self.temperature.state_dict() if self.temperature else None,
                "curriculum": self.curriculum.state_dict() if self.curriculum else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.graphs.load_state_dict(state["graphs"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        if self.temperature is not None:
            self.temperature.load_state_dict(state["temperature"])
        self.curriculum = Curriculum.from_state(state["curriculum"]) if state["curriculum"] else None
        if self.generation_done:
            self.bn_loss.remove()


def make_trainer(config: DistillConfig, teacher: GNN, **kwargs) -> GraphDistiller:
    """The trainer of ``config.method``: ACGKD, the GFKD baseline, or KD with the real training graphs."""
    from dfkd_fast.acgkd.gfkd import GFKDTrainer, RealKDTrainer

    cls = {"acgkd": ACGKDTrainer, "gfkd": GFKDTrainer, "real": RealKDTrainer}[config.method]
    return cls(config, teacher, **kwargs)
