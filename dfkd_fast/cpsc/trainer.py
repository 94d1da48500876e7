"""The CPSC-DFKD trainer: one method per phase of the algorithm (``notes/cpsc-dfkd.md`` §2.3-2.4).

Per epoch, ``epoch_itrs`` iterations of ``G_steps`` generator steps then ``S_steps`` student steps; every step draws
a fresh batch ``z ~ N(0, I)``, ``y ~ U{0..C-1}``. The student learns from the generator's current images only.

    generator step:  x = G(z, y);  minimise over G
                     -KL(T(x) || S(x)) - a*MSE(S, T) + b*BN-stats(T) + g*SupCon([f_S, f_T], y) + e*CE(softmax T(x), y)
    student step:    x = G(z, y) (no grad);  minimise over S   KL(T(x) || S(x)) + a*MSE(S, T) + e*CE(softmax S(x), y)

Speed without changing the maths: the teacher's parameters are frozen (input gradients still flow), the student's
weight gradients are not computed in generator steps (upstream discards them), the generator runs under no_grad in
student steps, BN statistics are collected only in the generator step's teacher forward, the SupCon / conditional
BN / BN-statistics ops are dfkd_fast's (fused kernels on CUDA), bf16 autocast and channels_last on CUDA, and
optionally torch.compile of both steps' loss computations.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from dfkd_fast.cpsc.config import CPSCConfig, student_lr
from dfkd_fast.cpsc.distributed import DistInfo, gather_with_grad
from dfkd_fast.cpsc.losses import (ce_loss, contrastive_anchors, contrastive_loss, ikd_generator, ikd_student,
                                   kd_loss)
from dfkd_fast.data.images import batches, denormalize, normalize, save_image_grid
from dfkd_fast.models import (ConditionalGenerator, FeatureAdapter, as_classifier, build_model, feature_dim,
                              num_classes_of)
from dfkd_fast.nn import BNStatsLoss, ClassConditionalBatchNorm2d
from dfkd_fast.runs import RunDir, atomic_save, check_finite, divergence_guard, progress

Norm = tuple[tuple[float, ...], tuple[float, ...]]
ADAM_BETAS, ADAM_EPS = (0.5, 0.999), 1e-8
# the flag to lower when a term or a network's weights turn non-finite (the divergence guard's message)
DIVERGENCE_FLAGS = {"loss_G": "--lr_G", "G_adv": "--lr_G", "G_ikd": "--co_alpha", "G_bn": "--co_beta",
                    "G_scl": "--co_gamma", "G_ce": "--co_eta", "loss_S": "--lr_S", "S_kd": "--lr_S",
                    "S_ikd": "--co_alpha", "S_ce": "--co_eta", "generator": "--lr_G", "student": "--lr_S"}


class CPSCTrainer:
    """Distil ``teacher`` into ``student`` with CPSC-DFKD.

    Args:
        config: the recipe (:class:`CPSCConfig`).
        teacher: a trained classifier: a zoo model (``forward(x, out_feature)``) or any ``model(x) -> logits``
            module, wrapped by :func:`dfkd_fast.models.as_classifier`; it is frozen and kept in eval mode.
        student, generator: the networks to train (the student wrapped in a :class:`FeatureAdapter` when its
            feature width differs from the teacher's; see :meth:`from_config`).
        norm: the teacher's input normalisation (mean, std): real test images are normalised with it, sample
            grids de-normalised with it.
        test_data: ``(uint8 images, labels)`` held-out real images for :meth:`evaluate` (optional).
        run_dir: where config, metrics, checkpoints and sample grids go (optional; main process only).
        dist: the process group (multi-GPU); default single process on ``device``.
    """

    def __init__(self, config: CPSCConfig, teacher: nn.Module, student: nn.Module, generator: ConditionalGenerator,
                 *, norm: Norm, device: str | torch.device = "cpu", test_data: tuple[Tensor, Tensor] | None = None,
                 run_dir: RunDir | None = None, dist: DistInfo | None = None, log=print) -> None:
        self.cfg = config.validate()
        self.dist = dist or DistInfo(device=torch.device(device))
        self.device = self.dist.device
        self.norm = norm
        self.test_data = test_data
        self.run_dir = run_dir
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        self.backend = None if config.fused else "reference"
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = {"auto": torch.bfloat16 if on_cuda else None, "bf16": torch.bfloat16,
                          "fp16": torch.float16, "off": None}[config.amp]
        memory_format = torch.channels_last if (on_cuda and config.channels_last) else torch.contiguous_format
        if on_cuda:  # autotuned cuDNN kernels unless bit-for-bit reproducibility is asked for
            torch.backends.cudnn.benchmark = not config.deterministic
            torch.backends.cudnn.deterministic = config.deterministic

        shape = dict(in_channels=generator.conv_blocks3_0.out_channels, image_size=generator.img_size)
        teacher = as_classifier(teacher, what="teacher", **shape)
        student = as_classifier(student, what="student", **shape)
        self.teacher = teacher.to(self.device, memory_format=memory_format).eval().requires_grad_(False)
        self.student = student.to(self.device, memory_format=memory_format).train()
        self.generator = generator.to(self.device, memory_format=memory_format).train()
        self.num_classes = num_classes_of(self.teacher)
        if num_classes_of(self.student) != self.num_classes or generator.num_classes != self.num_classes:
            raise ValueError(f"CPSCTrainer: teacher has {self.num_classes} classes, student "
                             f"{num_classes_of(self.student)}, generator {generator.num_classes}")
        for m in self.generator.modules():
            if isinstance(m, ClassConditionalBatchNorm2d):
                m.backend = self.backend
        # The BN-statistics term sums over the teacher's BatchNorm layers; a teacher without any (LeNet-5) has an
        # empty sum, i.e. the term is 0.
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.teacher.modules())
        self.bn_stats = BNStatsLoss(self.teacher, backend=self.backend) if (config.loss_BN and has_bn) else None
        if self.bn_stats is not None:
            self.bn_stats.enabled = False
        if config.loss_BN and not has_bn:
            self.log("cpsc: the teacher has no BatchNorm layer: the BN-statistics term is 0")

        # The student's core network (without the adapter) is what the student step trains and what is evaluated.
        self.student_core = self.student.model if isinstance(self.student, FeatureAdapter) else self.student
        self.opt_S = torch.optim.SGD(self.student.parameters(), lr=config.lr_S, momentum=config.momentum,
                                     weight_decay=config.weight_decay)
        self.opt_G = (torch.optim.Adam(self.generator.parameters(), lr=config.lr_G, betas=ADAM_BETAS, eps=ADAM_EPS)
                      if config.generator_optimizer == "adam" else None)
        self.gather = gather_with_grad if self.dist.enabled else None
        self.generator_train, self.student_train = self.generator, self.student_core
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if on_cuda else None
            self.generator_train = DDP(self.generator, device_ids=ids)
            self.student_train = DDP(self.student_core, device_ids=ids)
        self._generator_loss = self._compiled(self.generator_loss)
        self._student_loss = self._compiled(self.student_loss)

        self.epoch = 0
        self.best_acc, self.best_epoch, self.last_acc = -1.0, 0, None
        self._grid_seed = config.seed

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: CPSCConfig, teacher: nn.Module, *, in_channels: int, image_size: int,
                    student: nn.Module | None = None, **kwargs):
        """Build the student (``config.student`` from the zoo, unless a ``student`` module is given; with the
        feature adapter if its width differs from the teacher's) and the generator for ``teacher``'s number of
        classes, then the trainer. Uses the global RNG (seed it first)."""
        teacher = as_classifier(teacher, in_channels=in_channels, image_size=image_size, what="teacher")
        num_classes = num_classes_of(teacher)
        if student is None:
            student = build_model(config.student, num_classes, in_channels=in_channels)
        student = as_classifier(student, in_channels=in_channels, image_size=image_size, what="student")
        t_dim, s_dim = feature_dim(teacher), feature_dim(student)
        if config.loss_SCL and t_dim != s_dim:
            student = FeatureAdapter(student, s_dim, t_dim)
        generator = ConditionalGenerator(nz=config.nz, ngf=config.ngf, nc=in_channels, img_size=image_size,
                                         num_classes=num_classes)
        return cls(config, teacher, student, generator, **kwargs)

    def _compiled(self, fn):
        return torch.compile(fn, dynamic=False, mode=self.cfg.compile_mode) if self.cfg.compile else fn

    # -------------------------------------------------------------------------------------------------- sampling
    def sample(self) -> tuple[Tensor, Tensor]:
        """A fresh ``z ~ N(0, I_nz)`` and uniform labels. Every process draws the global batch and keeps its slice."""
        b, w, r = self.cfg.batch_size, self.dist.world_size, self.dist.rank
        z = torch.randn(w * b, self.cfg.nz, device=self.device)
        y = torch.randint(0, self.num_classes, (w * b,), device=self.device)
        return z[r * b:(r + 1) * b], y[r * b:(r + 1) * b]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------- generator step
    def generator_forward(self, z: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Synthesise ``x = G(z, y)`` and score it. The teacher sees it in eval mode (with gradient to its input and
        the BN statistics collected), the student in train mode (its BN running statistics move, as upstream)."""
        with self._autocast():
            x = self.generator_train(z, y)
            with self._collect_bn_stats():
                t_feat, t_logits = self.teacher(x, out_feature=True)
                bn = self.bn_stats() if self.bn_stats is not None else None
            s_feat, s_logits = self.student(x, out_feature=True)
        return {"t_feat": t_feat, "t_logits": t_logits, "s_feat": s_feat, "s_logits": s_logits, "bn": bn}

    def generator_objective(self, out: dict[str, Tensor], y: Tensor, contrast: tuple[Tensor, Tensor] | None = None,
                            rank: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """L_G and its unweighted terms. ``contrast``: the all-gathered (features, labels) of every process's
        anchors, in which this process's block starts at row ``rank * 2B`` (multi-GPU)."""
        cfg = self.cfg
        s_logits, t_logits = out["s_logits"], out["t_logits"]
        terms = {"adv": -kd_loss(s_logits, t_logits)}
        loss = terms["adv"]
        if cfg.loss_IKD:
            terms["ikd"] = ikd_generator(s_logits, t_logits, cfg.ikd_log_form())
            loss = loss + cfg.co_alpha * terms["ikd"]
        if out["bn"] is not None:
            terms["bn"] = out["bn"]
            loss = loss + cfg.co_beta * terms["bn"]
        if cfg.loss_SCL:
            terms["scl"] = contrastive_loss(out["s_feat"], out["t_feat"], y, cfg.temp, contrast=contrast,
                                            self_offset=rank * 2 * len(y), backend=self.backend)
            loss = loss + cfg.co_gamma * terms["scl"]
        if cfg.loss_CE:
            terms["ce"] = ce_loss(t_logits, y, cfg.ce_on_logits)
            loss = loss + cfg.co_eta * terms["ce"]
        return loss, terms

    def generator_loss(self, z: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_G on the batch ``G(z, y)`` (with multi-GPU, the contrast set is every process's batch)."""
        out = self.generator_forward(z, y)
        contrast = None
        if self.gather is not None and self.cfg.loss_SCL:
            anchors = contrastive_anchors(out["s_feat"], out["t_feat"], y)
            contrast = (self.gather(anchors[0]), self.gather(anchors[1]))
        return self.generator_objective(out, y, contrast, self.dist.rank)

    def generator_step(self) -> dict[str, Tensor]:
        """One update of the generator; the student's weights get no gradient (upstream computes and discards it)."""
        z, y = self.sample()
        with self._student_frozen():
            loss, terms = self._generator_loss(z, y)
            loss.backward()
        self.update_generator()
        return {"loss_G": loss.detach(), **{f"G_{k}": v.detach() for k, v in terms.items()}}

    def update_generator(self) -> None:
        """Apply and clear the generator's gradients.

        Upstream builds a new ``Adam(lr_G, betas=(0.5, 0.999))`` in every generator step. From a fresh state, Adam's
        only step is ``lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps)``: a sign update of size lr_G, which
        is applied here directly. ``generator_optimizer='adam'`` keeps one Adam instead (a known fix).
        """
        if self.opt_G is not None:
            self.opt_G.step()
            self.opt_G.zero_grad(set_to_none=True)
            return
        params = [p for p in self.generator.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        with torch.no_grad():
            denom = torch._foreach_abs(grads)
            torch._foreach_add_(denom, ADAM_EPS)
            torch._foreach_addcdiv_(params, grads, denom, value=-self.cfg.lr_G)
        for p in params:
            p.grad = None

    # --------------------------------------------------------------------------------------------- student step
    def student_loss(self, z: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_S on a batch of the current generator (no graph through the generator, teacher under no_grad)."""
        cfg = self.cfg
        with self._autocast():
            with torch.no_grad():
                x = self.generator(z, y)  # train mode: its CBN running statistics move, as upstream
                t_logits = self.teacher(x)
            s_logits = self.student_train(x)
        terms = {"kd": kd_loss(s_logits, t_logits)}
        loss = terms["kd"]
        if cfg.loss_IKD:
            terms["ikd"] = ikd_student(s_logits, t_logits, cfg.ikd_log_form())
            loss = loss + cfg.co_alpha * terms["ikd"]
        if cfg.loss_CE:
            terms["ce"] = ce_loss(s_logits, y, cfg.ce_on_logits)
            loss = loss + cfg.co_eta * terms["ce"]
        return loss, terms

    def student_step(self) -> dict[str, Tensor]:
        """One SGD update of the student."""
        z, y = self.sample()
        loss, terms = self._student_loss(z, y)
        self.opt_S.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_S.step()
        return {"loss_S": loss.detach(), **{f"S_{k}": v.detach() for k, v in terms.items()}}

    # -------------------------------------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _collect_bn_stats(self) -> Iterator[None]:
        if self.bn_stats is None:
            yield
            return
        self.bn_stats.clear()
        self.bn_stats.enabled = True
        try:
            yield
        finally:
            self.bn_stats.enabled = False

    @contextlib.contextmanager
    def _student_frozen(self) -> Iterator[None]:
        params = list(self.student.parameters())
        bns = [m for m in self.student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for p in params:
            p.requires_grad_(False)
        if self.cfg.freeze_student_bn_in_G:  # a fix: G-step batches leave the student's running statistics alone
            for m in bns:
                m.momentum = 0.0
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum

    # --------------------------------------------------------------------------------------------------- epochs
    def set_student_lr(self, epoch: int) -> float:
        lr = student_lr(self.cfg, epoch)
        for group in self.opt_S.param_groups:
            group["lr"] = lr
        return lr

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """``epoch_itrs`` iterations of G_steps generator steps then S_steps student steps; mean of every term."""
        cfg = self.cfg
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}

        def add(values: dict[str, Tensor]) -> None:
            for k, v in values.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
                counts[k] = counts.get(k, 0) + 1

        bar = progress(range(cfg.epoch_itrs), desc=f"epoch {epoch}/{cfg.epochs}",
                       disable=None if self.dist.is_main else True)
        for _ in bar:
            for _ in range(cfg.G_steps):
                add(self.generator_step())
            for _ in range(cfg.S_steps):
                add(self.student_step())
        bar.close()
        return {k: float(v) / counts[k] for k, v in sums.items()}  # one sync per epoch

    @torch.no_grad()
    def evaluate(self, data: tuple[Tensor, Tensor] | None = None, batch_size: int | None = None) -> float:
        """Top-1 accuracy (fraction) of the student on real held-out images normalised like the teacher's input."""
        images, labels = data if data is not None else self.test_data
        was_training = self.student_core.training
        self.student_core.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for x, y in batches(images, labels, batch_size or self.cfg.batch_size):
            x = normalize(x.to(self.device), *self.norm)
            with self._autocast():
                correct += (self.student_core(x).argmax(1) == y.to(self.device)).sum()
        self.student_core.train(was_training)
        return int(correct) / max(1, len(labels))

    @torch.no_grad()
    def sample_grid(self, path: str | Path) -> None:
        """A PNG of generated images, one row per class labelled ``y=<class>`` (with 64+ classes, rows of 10
        consecutive classes, labelled ``y=first-last``; eval mode: the generator's running statistics), from a
        fixed z so that successive grids show the same samples evolving; the training RNG is not touched."""
        per_class = max(1, min(8, 64 // self.num_classes))
        labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(per_class)
        gen = torch.Generator(device=self.device).manual_seed(self._grid_seed)
        z = torch.randn(len(labels), self.cfg.nz, device=self.device, generator=gen)
        self.generator.eval()
        images = self.generator(z, labels)
        self.generator.train()
        nrow = per_class if per_class > 1 else 10
        ys = labels.tolist()  # each row's condition label(s), written in the left margin
        names = [f"y={ys[i]}" if per_class > 1 else f"y={ys[i]}-{ys[min(i + nrow, len(ys)) - 1]}"
                 for i in range(0, len(ys), nrow)]
        save_image_grid(denormalize(images, *self.norm), path, nrow=nrow, row_labels=names)

    def fit(self) -> dict:
        """Train from the current epoch to ``epochs``: evaluate, log metrics, save grids, checkpoints and the best
        student. Returns the summary (final and best accuracy, wall time)."""
        cfg, start = self.cfg, time.perf_counter()
        images_per_epoch = cfg.epoch_itrs * (cfg.G_steps + cfg.S_steps) * cfg.batch_size * self.dist.world_size
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = self.set_student_lr(epoch)
            weights = {"generator": self.generator, "student": self.student}
            with divergence_guard("cpsc", f"epoch {epoch}", weights, DIVERGENCE_FLAGS):
                means = self.train_epoch(epoch)
            check_finite("cpsc", f"epoch {epoch}", means, weights, DIVERGENCE_FLAGS)  # before anything is written
            self.epoch = epoch
            elapsed = time.perf_counter() - t0
            record = {"epoch": epoch, "lr_S": lr, "lr_G": cfg.lr_G, "epoch_s": elapsed,
                      "images_per_s": images_per_epoch / elapsed, **means}
            last = epoch == cfg.epochs
            if self.dist.is_main:
                if self.test_data is not None and cfg.eval_every and (epoch % cfg.eval_every == 0 or last):
                    self.last_acc = acc = self.evaluate()
                    record["acc"] = acc
                    if acc > self.best_acc:
                        self.best_acc, self.best_epoch = acc, epoch
                        self._save_models("best")
                    record["best_acc"] = self.best_acc
                self._report(record)
                if self.run_dir is not None:
                    self.run_dir.log(record)
                    if cfg.sample_every and (epoch % cfg.sample_every == 0 or last):
                        self.sample_grid(self.run_dir.path / "samples" / f"epoch_{epoch:04d}.png")
                    if last:
                        self._save_models("final")
                    if (cfg.ckpt_every and epoch % cfg.ckpt_every == 0) or last:
                        self.run_dir.save(self.state_dict())
        return {"epochs": self.epoch, "acc": self.last_acc, "best_acc": self.best_acc if self.best_acc >= 0 else None,
                "best_epoch": self.best_epoch, "wall_s": time.perf_counter() - start}

    def _report(self, record: dict) -> None:
        acc = f" acc {record['acc']:.2%} (best {record['best_acc']:.2%})" if "acc" in record else ""
        self.log(f"epoch {record['epoch']}/{self.cfg.epochs}: L_G {record.get('loss_G', math.nan):.4f} "
                 f"L_S {record.get('loss_S', math.nan):.4f} lr_S {record['lr_S']:.5f}{acc} "
                 f"[{record['epoch_s']:.1f}s, {record['images_per_s']:.0f} img/s]")

    # ---------------------------------------------------------------------------------------------- checkpoints
    def model_record(self, acc: float | None = None) -> dict:
        """The student in the CMI layout (``state_dict`` of the network without adapter) plus what evaluating it
        needs; ``dfkd-fast eval`` and :func:`dfkd_fast.models.load_weights` read it."""
        return {"state_dict": self.student_core.state_dict(), "model": self.cfg.student, "dataset": self.cfg.dataset,
                "num_classes": self.num_classes, "in_channels": self.generator.conv_blocks3_0.out_channels,
                "mean": list(self.norm[0]), "std": list(self.norm[1]), "acc": acc, "epoch": self.epoch}

    def _save_models(self, tag: str) -> None:
        if self.run_dir is None:
            return
        acc = self.best_acc if tag == "best" else self.last_acc
        atomic_save(self.model_record(acc), self.run_dir.path / f"{tag}_student.pt")
        g = self.generator
        atomic_save({"state_dict": g.state_dict(), "nz": g.nz, "img_size": g.img_size, "num_classes": g.num_classes,
                     "ngf": self.cfg.ngf, "nc": g.conv_blocks3_0.out_channels, "epoch": self.epoch},
                    self.run_dir.path / f"{tag}_generator.pt")

    def state_dict(self) -> dict:
        """Everything the next step depends on (the RNG states are added by :meth:`RunDir.save`)."""
        return {"epoch": self.epoch, "student": self.student.state_dict(), "generator": self.generator.state_dict(),
                "opt_S": self.opt_S.state_dict(), "opt_G": self.opt_G.state_dict() if self.opt_G else None,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "last_acc": self.last_acc,
                "config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        self.opt_S.load_state_dict(state["opt_S"])
        if self.opt_G is not None and state.get("opt_G"):
            self.opt_G.load_state_dict(state["opt_G"])
        self.epoch = state["epoch"]
        self.best_acc, self.best_epoch, self.last_acc = state["best_acc"], state["best_epoch"], state["last_acc"]
