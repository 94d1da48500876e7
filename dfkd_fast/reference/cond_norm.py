"""Class-conditional batch normalisation (CPSC-DFKD's CategoricalConditionalBatchNorm2d).

    y[n, c, ...] = gamma[label_n, c] * (x[n, c, ...] - mu_c) / sqrt(var_c + eps) + beta[label_n, c]

``mu``/``var`` are the biased batch statistics over every dimension but the channel (train mode, or when no
running statistics are given) or the running statistics (eval mode). In train mode the running statistics are
updated in place as ``nn.BatchNorm2d`` does: ``r = (1 - momentum) * r + momentum * s``, with the unbiased variance.
"""

from __future__ import annotations

import torch

from dfkd_fast.reference._common import batch_var_mean, compute_dtype, reduce_dims


@torch.library.custom_op("dfkd_fast::update_running_stats", mutates_args=("running_mean", "running_var"))
def update_running_stats(
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    count: int,
    momentum: float,
) -> None:
    """In-place running-statistics update of nn.BatchNorm (``var`` is the biased batch variance).

    A custom op, not for speed: torch.func transforms see it as the opaque side effect it is (``torch.func.grad``
    refuses an in-place update of a captured tensor written in plain PyTorch), as they see the fused backend's.
    """
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (count / max(count - 1, 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


@update_running_stats.register_fake
def _(running_mean, running_var, mean, var, count, momentum):
    return None


def class_conditional_batch_norm_reference(
    x: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-3,
) -> torch.Tensor:
    acc = compute_dtype(x.dtype)
    xa = x.to(acc)
    dims = reduce_dims(x)
    if training or running_mean is None or running_var is None:
        var, mean = batch_var_mean(xa, dims)
        if training and (running_mean is not None or running_var is not None):
            count = x.numel() // x.shape[1]
            update_running_stats(running_mean, running_var, mean.detach(), var.detach(), count, momentum)
    else:
        mean, var = running_mean.to(acc), running_var.to(acc)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    x_hat = (xa - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)
    per_sample = x.shape[:2] + (1,) * (x.dim() - 2)  # not -1: ambiguous for an empty batch
    gamma = weight[labels].to(acc).view(per_sample)
    beta = bias[labels].to(acc).view(per_sample)
    return (gamma * x_hat + beta).to(x.dtype)
