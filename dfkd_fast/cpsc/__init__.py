"""CPSC-DFKD (Shao, Zhang, Wang, Pattern Recognition 2023): data-free distillation with a class-conditional generator
and a pseudo-supervised contrastive loss. :class:`CPSCConfig` holds the paper's recipe, :class:`CPSCTrainer` runs it;
``dfkd-fast cpsc`` is the command line."""

from dfkd_fast.cpsc.config import CPSCConfig, student_lr
from dfkd_fast.cpsc.trainer import CPSCTrainer

__all__ = ["CPSCConfig", "CPSCTrainer", "student_lr"]
