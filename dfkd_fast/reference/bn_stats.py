"""Batch-norm statistics loss (DeepInversion; CPSC-DFKD and GFKD use it on every BatchNorm of the teacher).

For the input ``x`` of a BatchNorm layer, with the biased batch mean and variance over every dimension but the
channel:

    L = || mean(x) - running_mean ||_2 + || var(x) - running_var ||_2

(plain L2 norms, not squared), summed over layers by the caller.
"""

from __future__ import annotations

import torch

from dfkd_fast.reference._common import batch_var_mean, compute_dtype, reduce_dims


def bn_stats_loss_reference(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    acc = compute_dtype(x.dtype)
    var, mean = batch_var_mean(x.to(acc), reduce_dims(x))
    return torch.linalg.vector_norm(mean - running_mean.to(acc)) + torch.linalg.vector_norm(var - running_var.to(acc))
