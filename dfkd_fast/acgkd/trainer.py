"""The graph distillation trainers: ACGKD here, the GFKD baseline in :mod:`dfkd_fast.acgkd.gfkd`.

Every method runs the same two phases, one method each (:class:`GraphDistiller`):

1. ``generation_step`` (repeated ``iterations`` times): optimise the pseudo-graphs against the frozen teacher;
   then ``finish_generation`` freezes what the KD phase needs (ACGKD: the curriculum order);
2. ``kd_epoch`` (repeated ``epochs`` times): ``kd_step`` on each batch of ``kd_batches``, and ``evaluate`` on the real
   test graphs every ``eval_every`` epochs.

``fit`` runs both with a run directory (metrics.jsonl, atomic checkpoints, exact resume, a tqdm bar, pictures), and
keeps the label-free-selected student next to the last one. :func:`dfkd_fast.acgkd.methods.make_trainer` picks the
trainer of a config (this module imports neither :mod:`~dfkd_fast.acgkd.gfkd` nor that one: no import cycle).
"""

from __future__ import annotations

import copy
import math
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
from dfkd_fast.runs import RunDir, check_finite, divergence_guard, progress, say

# the flags to lower when a term or weights turn non-finite (the divergence guard's message)
GENERATION_FLAGS = {"loss": "--lr-structure / --lr-features", "ce": "--w-ce", "bn": "--w-bn",
                    "entropy": "--w-entropy", "tau": "--tau / --tau-end", "temperature": "--t-min / --t-range",
                    "pseudo-graph": "--lr-structure / --lr-features"}
KD_FLAGS = {"loss": "--lr / --w-feat / --w-kd", "kd": "--w-kd", "feature": "--w-feat",
            "temperature": "--t-min / --t-range", "student": "--lr", "selected_kl": "--lr / --t-min / --t-range"}


def pseudo_graph_count(num_graphs: int, graph_factor: float = 1.0) -> int:
    """The pseudo-graphs ``graph_factor`` times ``num_graphs`` (the training-set size) asks for: at least one, none
    without a size."""
    return max(1, round(graph_factor * num_graphs)) if num_graphs else 0


def graph_batches(graphs: list, batch_size: int = 256) -> list:
    """PyG batches of ``graphs`` in order (built once: evaluation reuses them)."""
    from torch_geometric.data import Batch

    return [Batch.from_data_list(graphs[i:i + batch_size]) for i in range(0, len(graphs), batch_size)]


@torch.no_grad()
def predictions(model: nn.Module, batches: list, device: torch.device | str = "cpu") -> Tensor:
    """Argmax classes of ``model`` (in eval mode; its mode is restored) on ``batches``, concatenated; reads no label."""
    was_training = model.training
    model.eval()
    out = [model(batch.to(device)).argmax(1).cpu() for batch in batches]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def labels_of(batches: list) -> Tensor:
    return torch.cat([batch.y.cpu() for batch in batches]) if batches else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, batches: list, device: torch.device | str = "cpu") -> float:
    """Fraction of graphs whose argmax logit is the label (``model`` in eval mode; its mode is restored)."""
    preds = predictions(model, batches, device)
    return float((preds == labels_of(batches)).float().mean()) if preds.numel() else 0.0


def class_fractions(preds: Tensor, num_classes: int) -> list[float]:
    """Fraction of ``preds`` in each class."""
    return (torch.bincount(preds, minlength=num_classes).double() / max(preds.numel(), 1)).tolist()


def collapse_message(preds: Tensor, num_classes: int, threshold: float, what: str = "student",
                     teacher_preds: Tensor | None = None) -> str | None:
    """The one-line warning when one class holds at least ``threshold`` of ``preds`` (None otherwise).

    A student that predicts (nearly) one class for every graph is a collapsed student even when its accuracy looks
    plausible on an imbalanced split; the check reads predictions only, never labels. With ``teacher_preds`` (the
    teacher's predictions on the same graphs) the line also gives the teacher's share of that class, which tells a
    student that drifted away from its teacher from one that follows a teacher predicting mostly that class.
    """
    if preds.numel() == 0 or threshold >= 1.0 + 1e-12:
        return None
    fractions = class_fractions(preds, num_classes)
    top = max(range(num_classes), key=fractions.__getitem__)
    if fractions[top] < threshold:
        return None
    teacher = ("" if teacher_preds is None
               else f", the teacher for {class_fractions(teacher_preds, num_classes)[top]:.0%}")
    return (f"dfkd-fast: warning: the {what} predicts class {top} for {fractions[top]:.0%} of the {preds.numel()} "
            f"evaluation graphs{teacher} (--collapse-threshold {threshold:g}): it has collapsed onto one class")


@torch.no_grad()
def agreement_score(student: nn.Module, teacher: nn.Module, graphs: list, num_classes: int) -> tuple[float, float]:
    """(class-balanced agreement, mean KL(teacher || student)) of ``student`` with ``teacher`` on ``graphs``.

    The label-free model-selection score: the mean over the teacher's predicted classes of the fraction of those
    graphs on which the student predicts the same class (so a constant student scores 1 / classes at most), and the
    KL at T = 1 as the tie-break (lower is better). Needs no label of any graph.
    """
    was_training = student.training
    student.eval()
    t_pred, s_pred, kl = [], [], []
    for g in graphs:
        t, s = teacher(g), student(g)
        t_pred.append(t.argmax(1))
        s_pred.append(s.argmax(1))
        log_t, log_s = torch.log_softmax(t, 1), torch.log_softmax(s, 1)
        kl.append((log_t.exp() * (log_t - log_s)).sum(1))
    student.train(was_training)
    t_pred, s_pred, kl = torch.cat(t_pred), torch.cat(s_pred), torch.cat(kl)
    recalls = [float((s_pred[t_pred == c] == c).float().mean()) for c in range(num_classes) if (t_pred == c).any()]
    return sum(recalls) / max(len(recalls), 1), float(kl.mean())


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
        base = config.num_graphs or (len(train_graphs) if train_graphs else 0)
        self.num_graphs = pseudo_graph_count(base, getattr(config, "graph_factor", 1.0))
        torch.manual_seed(config.seed)
        self.student = self.build_student().to(self.device)
        # the model that is evaluated, selected and saved: the weight average, or the student itself
        self.ema_student = (copy.deepcopy(self.student).requires_grad_(False) if config.ema is not None else None)
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
        # label-free model selection: graphs the student never trains on, scored by agreement with the teacher
        self.num_holdout = max(4, math.ceil(config.holdout * self.num_graphs)) if config.holdout > 0 else 0
        self.selection_set: list | None = None  # DenseGraphs / PyG batches; set by finish_generation (or __init__)
        self.selected: dict | None = None  # {"epoch", "agreement", "kl"} of the selected student
        self.selected_state: dict | None = None  # its state_dict
        self.num_classes = self.teacher.num_classes

    # -- to be defined by the methods -------------------------------------------------------------------------
    def build_student(self) -> nn.Module:
        return build_student(self.config.student, "none", self.teacher)

    def generation_step(self) -> dict:
        raise NotImplementedError

    def finish_generation(self) -> None:
        pass

    def kd_batches(self) -> Iterator:
        """Batches of the KD phase (default: the exported pseudo-graphs but the held-out ones)."""
        for index in self._shuffled(torch.arange(self.num_graphs)):
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

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation, selection and ``last_student.pt`` use: the weight average with ``ema``, else the student."""
        return self.student if self.ema_student is None else self.ema_student

    def _update(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema_student is not None:
            with torch.no_grad():
                for avg, p in zip(self.ema_student.parameters(), self.student.parameters()):
                    avg.lerp_(p, 1 - self.config.ema)
                for avg, b in zip(self.ema_student.buffers(), self.student.buffers()):
                    avg.copy_(b)  # BN statistics follow the student (and are re-estimated before evaluation)

    def _shuffled(self, pool: Tensor) -> list[Tensor]:
        """The KD batches of ``pool``: reshuffled every epoch unless ``fixed_order`` (GFKD's loader keeps one order);
        ``ceil(len / batch_size)`` near-equal batches with ``even_batches`` (no tiny remainder batch), else batches of
        ``batch_size`` and the remainder."""
        cfg = self.config
        order = pool if cfg.fixed_order else pool[torch.randperm(pool.numel(), generator=self.batch_generator)]
        order = order.to(self.device)
        if cfg.even_batches:
            return list(order.tensor_split(math.ceil(order.numel() / cfg.batch_size)))
        return list(order.split(cfg.batch_size))

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
        """Student accuracy on the real test graphs (None without test graphs). Only the report reads the labels."""
        return accuracy(self.eval_model, self.eval_batches, self.device) if self.eval_batches else None

    def bn_graphs(self) -> Iterator:
        """The graphs :meth:`recalibrate_bn` passes through the student (default: every exported KD graph)."""
        yield select(self.exported, torch.arange(self.num_graphs, device=self.exported.mask.device))

    @torch.no_grad()
    def recalibrate_bn(self) -> None:
        """Replace the student's BN running statistics by their exact averages over :meth:`bn_graphs` (one pass in
        train mode, ``momentum=None``: a cumulative average); the weights are untouched."""
        model = self.eval_model
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        was_training = model.training
        model.train()
        for graphs in self.bn_graphs():
            model(graphs)
        model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    def holdout_index(self) -> Tensor:
        """The held-out pseudo-graphs: the last ``num_holdout`` of the ``num_graphs + num_holdout`` generated."""
        return torch.arange(self.num_graphs, self.num_graphs + self.num_holdout)

    def consider_for_selection(self) -> None:
        """Keep the student if it agrees with the teacher on the held-out graphs at least as well as the kept one
        (class-balanced agreement, then KL; a later epoch wins a tie), from ``selection_start`` of the KD epochs on
        (and always the last epoch). Reads no label of any graph."""
        cfg = self.config
        if not self.selection_set or (self.epoch < cfg.selection_start * cfg.epochs and self.epoch < cfg.epochs):
            return
        agreement, kl = agreement_score(self.eval_model, self.teacher, self.selection_set, self.num_classes)
        if self.selected is None or (agreement, -kl) >= (self.selected["agreement"], -self.selected["kl"]):
            self.selected = {"epoch": self.epoch, "agreement": agreement, "kl": kl}
            self.selected_state = copy.deepcopy(self.eval_model.state_dict())

    def selected_student(self) -> nn.Module:
        """The label-free-selected student (the last one when nothing was scored); a copy."""
        model = copy.deepcopy(self.eval_model)
        if self.selected_state is not None:
            model.load_state_dict(self.selected_state)
        return model.eval()

    def collapse_warnings(self) -> list[str]:
        """One line per collapsed student (last, selected) on the evaluation graphs; printed by :meth:`fit`."""
        lines = []
        if self.eval_batches:
            teacher_preds = predictions(self.teacher, self.eval_batches, self.device)
            for what, model in (("last student", self.eval_model), ("selected student", self.selected_student())):
                preds = predictions(model, self.eval_batches, self.device)
                line = collapse_message(preds, self.num_classes, self.config.collapse_threshold, what, teacher_preds)
                if line:
                    lines.append(line)
        return lines

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
                if cfg.recalibrate_bn:
                    self.recalibrate_bn()
                self.consider_for_selection()  # before the evaluation, which alone reads test labels
                if self.selected is not None:  # the held-out agreement of a diverged (e.g. overflowing) student
                    check_finite(self.method, f"KD epoch {self.epoch}", {"selected_kl": self.selected["kl"]},
                                 {"student": self.eval_model}, KD_FLAGS)
                acc = self.evaluate()
                if acc is not None:
                    self.history.append((self.epoch, acc))
                    bar.set_postfix(acc=f"{acc:.3f}")
                selected = {f"selected_{k}": v for k, v in (self.selected or {}).items()}
                self._log(run, {"phase": "kd", "epoch": self.epoch, "test_acc": acc, **metrics, **selected})
                self._save(run)
        bar.close()
        if self.epoch == cfg.epochs:
            for line in self.collapse_warnings():
                say(line, err=True)
        return self.summary()

    def _weights(self) -> dict:
        """What the divergence guard checks: the pseudo-graphs, the student and the adversarial temperature."""
        return {"pseudo-graph": getattr(self, "graphs", None), "student": self.student,
                "temperature": self.temperature}

    def summary(self) -> dict:
        """Timings and accuracies: ``last_acc`` (last epoch), ``selected_acc`` (the label-free-selected student,
        ``selected_epoch``) and ``best_acc`` (best evaluated epoch: GFKD's optimistic protocol, reads test labels)."""
        accs = dict(self.history)
        # no selection set (holdout 0): the selected student is the last one
        epoch = self.selected["epoch"] if self.selected else (self.history[-1][0] if self.history else None)
        return {"method": self.method, "generation_s": self.generation_s, "kd_s": self.kd_s,
                "last_acc": self.history[-1][1] if accs else None, "best_acc": max(accs.values()) if accs else None,
                "selected_acc": accs.get(epoch), "selected_epoch": epoch,
                "selected_agreement": self.selected["agreement"] if self.selected else None,
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
    STUDENT_KEYS = ("student", "optimizer", "scheduler", "temperature", "selected", "selected_state", "ema_student")

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
            "batch_generator": self.batch_generator.get_state(), "selected": self.selected,
            "selected_state": self.selected_state, "selection_set": self._stored_selection_set(),
            "ema_student": self.ema_student.state_dict() if self.ema_student is not None else None,
        }

    def _stored_selection_set(self) -> list | None:
        """The selection set as the checkpoint stores it (pseudo-graphs; real graphs are rebuilt instead)."""
        if self.selection_set and isinstance(self.selection_set[0], DenseGraphs):
            return [tuple(g) for g in self.selection_set]  # plain tuples: weights_only-loadable
        return None

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch, self.generation_done = state["step"], state["epoch"], state["generation_done"]
        self.generation_s, self.kd_s = state["generation_s"], state["kd_s"]
        self.history = [tuple(h) for h in state["history"]]
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.exported = DenseGraphs(*state["exported"]) if state["exported"] is not None else None
        self.batch_generator.set_state(state["batch_generator"])
        self.selected, self.selected_state = state["selected"], state["selected_state"]
        if self.ema_student is not None:
            self.ema_student.load_state_dict(state["ema_student"])
        if state["selection_set"] is not None:
            self.selection_set = [DenseGraphs(*g) for g in state["selection_set"]]


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
            self.num_graphs + self.num_holdout, self.teacher.in_dim, self.teacher.num_classes,
            min_nodes=cfg.min_nodes, max_nodes=cfg.max_nodes, tau=cfg.tau, xi=cfg.xi, edge_budget=cfg.edge_budget,
            init_density=cfg.init_density, symmetric=cfg.symmetric, straight_through=cfg.straight_through,
            hard_features=cfg.hard_features, degree_cap=cfg.degree_cap, connect_isolated=cfg.connect_isolated,
            mean_degree=cfg.mean_degree, seed=cfg.seed, backend=self.backend).to(self.device)
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
                                           cfg.curriculum_start, cfg.curriculum_ramp, count=self.num_graphs,
                                           balanced=cfg.balanced_curriculum)
        if not cfg.resample:
            self.exported = self.graphs.hard_sample()
        if self.num_holdout:  # fixed draws of the held-out graphs, as a student would see them
            held_out = self.holdout_index().to(self.device)
            draws = cfg.selection_draws if self.exported is None else 1  # fixed graphs: every draw is the same
            self.selection_set = [self.student_graphs(held_out) for _ in range(draws)]

    def student_graphs(self, index: Tensor) -> DenseGraphs:
        """The pseudo-graphs ``index`` as the student sees them: a fresh hard draw, or the fixed one without
        ``resample``."""
        return self.graphs.hard_sample(index) if self.exported is None else select(self.exported, index)

    def kd_batches(self) -> Iterator[DenseGraphs]:
        for index in self._shuffled(self.curriculum.pool(self.epoch)):
            yield self.student_graphs(index)

    def bn_graphs(self) -> Iterator[DenseGraphs]:
        """All the KD pseudo-graphs, one fresh draw (or the fixed one without ``resample``)."""
        yield self.student_graphs(torch.arange(self.num_graphs, device=self.device))

    def kd_step(self, graphs: DenseGraphs) -> dict:
        """``w_feat * MSE(projected student feature, teacher feature) + w_kd * KD(tau_adv)``."""
        cfg = self.config
        with torch.no_grad():
            teacher_feature, teacher_logits = self.teacher.features(graphs)
        if isinstance(self.student, ProjectedStudent):
            student_feature, student_logits = self.student.features(graphs)
            feat = losses.feature_loss(student_feature, teacher_feature, cfg.feature_loss, graphs.mask.sum(1))
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
