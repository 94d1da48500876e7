"""The CPSC-DFKD configuration. The defaults are the paper's recipe: the README command of the upstream code
(CIFAR-100, ResNet-34 -> ResNet-18) with every term, weight, quirk and schedule of ``notes/cpsc-dfkd.md`` §2.3-2.4.

Flag names follow the upstream script (``G_steps``, ``lr_S``, ``co_alpha``, ...). Known fixes of upstream quirks are
separate switches, all off by default; speed options never change the maths.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from dfkd_fast.errors import DfkdError

IKD_FORMS = ("auto", "mse", "log")
G_OPTIMIZERS = ("fresh_adam", "adam")
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass
class CPSCConfig:
    # models and data (num_classes comes from the dataset)
    teacher: str = "resnet34"
    student: str = "resnet18"
    dataset: str = "cifar100"

    # schedule: 600 epochs x 50 iterations x (6 generator steps, then 5 student steps), batch 512
    batch_size: int = 512
    epochs: int = 600
    epoch_itrs: int = 50
    G_steps: int = 6
    S_steps: int = 5
    lr_G: float = 1e-3
    lr_S: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 10  # GradualWarmupScheduler(total_epoch=10) before the cosine
    nz: int = 256
    ngf: int = 64
    temp: float = 0.07

    # loss terms (README: all on, alpha 5, beta 1, gamma 0.7, eta 0.7)
    loss_IKD: bool = True
    co_alpha: float = 5.0
    loss_BN: bool = True
    co_beta: float = 1.0
    loss_SCL: bool = True
    co_gamma: float = 0.7
    loss_CE: bool = True
    co_eta: float = 0.7
    ikd: str = "auto"  # "auto": the log forms on CIFAR-10 (upstream: dataset == 'cifar10'), MSE forms elsewhere

    # known fixes, off by default (on = a deliberate deviation from upstream)
    ce_on_logits: bool = False  # upstream applies cross-entropy to softmax *probabilities*
    generator_optimizer: str = "fresh_adam"  # upstream builds a new Adam every G step (= a sign update of lr_G)
    freeze_student_bn_in_G: bool = False  # upstream lets G-step batches update the student's BN running stats
    warmup_cosine_once: bool = False  # upstream's warmup-scheduler 0.3 applies the cosine factor twice at epoch w+1

    # speed (semantics-preserving)
    fused: bool = True  # the dfkd_fast ops on the default backend (fused kernels on CUDA); False = reference ops
    amp: str = "auto"  # "auto" = bf16 autocast on CUDA, off on CPU
    channels_last: bool = True  # on CUDA only
    compile: bool = False  # torch.compile the loss computation of both steps
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" adds CUDA graphs
    deterministic: bool = False  # cuDNN deterministic algorithms (upstream's setting; bit-for-bit resume on GPU)

    # run
    seed: int = 1
    eval_every: int = 1  # epochs between evaluations (0: never)
    sample_every: int = 50  # epochs between PNG sample grids (0: never)
    ckpt_every: int = 1  # epochs between resumable checkpoints
    extra: dict = field(default_factory=dict)  # free-form notes recorded in config.json

    def validate(self) -> "CPSCConfig":
        for name in ("batch_size", "epochs", "epoch_itrs", "nz", "ngf"):
            if getattr(self, name) < 1:
                raise DfkdError(f"cpsc: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("G_steps", "S_steps", "warmup_epochs", "eval_every", "sample_every", "ckpt_every"):
            if getattr(self, name) < 0:
                raise DfkdError(f"cpsc: {name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise DfkdError(f"cpsc: batch_size must be >= 2 (batch norm needs two samples), got {self.batch_size}")
        for name in ("lr_G", "lr_S", "temp"):
            if not getattr(self, name) > 0:
                raise DfkdError(f"cpsc: {name} must be > 0, got {getattr(self, name)}")
        for name, allowed in (("ikd", IKD_FORMS), ("generator_optimizer", G_OPTIMIZERS), ("amp", AMP_MODES),
                              ("compile_mode", COMPILE_MODES)):
            if getattr(self, name) not in allowed:
                raise DfkdError(f"cpsc: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        return self

    def ikd_log_form(self) -> bool:
        return self.ikd == "log" or (self.ikd == "auto" and self.dataset == "cifar10")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CPSCConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def student_lr(config: CPSCConfig, epoch: int) -> float:
    """The student's learning rate in ``epoch`` (1-based), exactly as upstream's schedulers produce it.

    Upstream steps ``CosineAnnealingLR(T_max=epochs)`` and then ``GradualWarmupScheduler(multiplier=1,
    total_epoch=10)`` (PyPI ``warmup-scheduler`` 0.3, the only release on PyPI) once per epoch before training it:

    * e <= 10: the linear warm-up ``lr * e / 10``;
    * e = 11: the cosine's recursive step takes the warmed-up ``lr`` to ``lr * r`` with
      ``r = (1 + cos(11 pi / E)) / (1 + cos(10 pi / E))``; then the wrapper, finishing its warm-up, returns the
      cosine's *recursive* ``get_lr()`` again, from that already-stepped value: ``lr * r**2``. (From 0.3.2 on the
      package returns ``get_last_lr()``, i.e. ``lr * r``: ``warmup_cosine_once=True`` gives that.)
    * e >= 12: the wrapper calls the cosine's closed form at ``e - 10``: ``lr / 2 * (1 + cos(pi * (e - 10) / E))``.
    """
    w, lr, total = config.warmup_epochs, config.lr_S, config.epochs
    if epoch <= w:
        return lr * epoch / w
    if epoch == w + 1 and w > 0:
        r = (1 + math.cos(math.pi * (w + 1) / total)) / (1 + math.cos(math.pi * w / total))
        return lr * r if config.warmup_cosine_once else lr * r * r
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - w) / total))
