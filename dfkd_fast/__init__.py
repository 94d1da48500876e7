"""dfkd_fast: fast data-free knowledge distillation.

Fused kernels (Triton and C++/CUDA) for the hot paths of CPSC-DFKD and ACGKD, behind validated functional ops
(:mod:`dfkd_fast.ops`, re-exported here), ``nn.Module`` faces (:mod:`dfkd_fast.nn`) and plain-PyTorch references
(:mod:`dfkd_fast.reference`); and the trainers built on them (:mod:`dfkd_fast.cpsc`, :mod:`dfkd_fast.acgkd`).
"""

from dfkd_fast import nn
from dfkd_fast._backend import get_backend, set_backend, use_backend
from dfkd_fast.ops import (
    adjacency_to_pyg,
    binary_concrete_adjacency,
    bn_stats_loss,
    class_conditional_batch_norm,
    supcon_loss,
    supcon_loss_pairs,
)

__version__ = "0.1.0"

__all__ = [
    "adjacency_to_pyg",
    "binary_concrete_adjacency",
    "bn_stats_loss",
    "class_conditional_batch_norm",
    "get_backend",
    "set_backend",
    "supcon_loss",
    "supcon_loss_pairs",
    "use_backend",
]
