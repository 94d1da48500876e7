"""class_conditional_batch_norm: batch norm without affine, then a per-sample ``gamma[label]``, ``beta[label]``.

Custom ops ``dfkd_fast::cond_norm_fwd`` (output and the fp32 per-channel mean and biased variance) and
``dfkd_fast::cond_norm_bwd`` (dx and the per-class dgamma/dbeta tables), their fake kernels and autograd formula,
and the validated functional API. The maths is in :mod:`dfkd_fast.reference.cond_norm`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfkd_fast import _checks
from dfkd_fast._backend import use_fused
from dfkd_fast.reference._common import compute_dtype, reduce_dims
from dfkd_fast.reference.cond_norm import class_conditional_batch_norm_reference, update_running_stats


def _broadcast(stat: Tensor, x: Tensor) -> Tensor:
    return stat.view((1, -1) + (1,) * (x.dim() - 2))


def _per_sample(table: Tensor, labels: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    return table[labels].to(dtype).view((x.shape[0], -1) + (1,) * (x.dim() - 2))


@torch.library.custom_op("dfkd_fast::cond_norm_fwd", mutates_args=())
def cond_norm_fwd(
    x: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    use_batch_stats: bool,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean[C], var[C]); the statistics are the batch's (biased) or copies of the running ones."""
    acc = compute_dtype(x.dtype)
    xa = x.to(acc)
    if use_batch_stats:
        var, mean = torch.var_mean(xa, dim=reduce_dims(x), correction=0)
    else:
        mean, var = running_mean.to(acc).clone(), running_var.to(acc).clone()
    x_hat = (xa - _broadcast(mean, x)) * _broadcast(torch.rsqrt(var + eps), x)
    y = _per_sample(weight, labels, x, acc) * x_hat + _per_sample(bias, labels, x, acc)
    return y.to(x.dtype), mean, var


@cond_norm_fwd.register_fake
def _(x, labels, weight, bias, running_mean, running_var, use_batch_stats, eps):
    acc = compute_dtype(x.dtype)
    channels = x.shape[1]
    return torch.empty_like(x), x.new_empty(channels, dtype=acc), x.new_empty(channels, dtype=acc)


@torch.library.custom_op("dfkd_fast::cond_norm_bwd", mutates_args=())
def cond_norm_bwd(
    grad_y: Tensor,
    x: Tensor,
    labels: Tensor,
    weight: Tensor,
    mean: Tensor,
    var: Tensor,
    use_batch_stats: bool,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight[K, C], dbias[K, C])."""
    acc = mean.dtype
    rstd = torch.rsqrt(var + eps)
    x_hat = (x.to(acc) - _broadcast(mean, x)) * _broadcast(rstd, x)
    dy = grad_y.to(acc)
    spatial = list(range(2, x.dim()))
    s1 = dy.sum(spatial) if spatial else dy  # [N, C]: sum of dy per sample and channel
    s2 = (dy * x_hat).sum(spatial) if spatial else dy * x_hat
    dweight = torch.zeros(weight.shape, dtype=acc, device=x.device).index_add_(0, labels, s2)
    dbias = torch.zeros(weight.shape, dtype=acc, device=x.device).index_add_(0, labels, s1)
    gamma = weight[labels].to(acc)  # [N, C]
    dx = gamma.view(s1.shape + (1,) * len(spatial)) * dy
    if use_batch_stats:
        count = x.numel() // x.shape[1]
        mean_dy = (gamma * s1).sum(0) / count
        mean_dy_xhat = (gamma * s2).sum(0) / count
        dx = dx - _broadcast(mean_dy, x) - x_hat * _broadcast(mean_dy_xhat, x)
    dx = dx * _broadcast(rstd, x)
    return dx.to(x.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype)


@cond_norm_bwd.register_fake
def _(grad_y, x, labels, weight, mean, var, use_batch_stats, eps):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, labels, weight, _bias, _rm, _rv, use_batch_stats, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(x, labels, weight, mean, var)
    ctx.params = (use_batch_stats, eps)
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx, grad_y, _grad_mean, _grad_var):
    dx, dweight, dbias = cond_norm_bwd(grad_y, *ctx.saved_tensors, *ctx.params)
    return dx, None, dweight, dbias, None, None, None, None


torch.library.register_autograd("dfkd_fast::cond_norm_fwd", _backward, setup_context=_setup_context)


def class_conditional_batch_norm(
    x: Tensor,
    labels: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-3,
    backend: str | None = None,
) -> Tensor:
    """Class-conditional batch norm: ``weight[labels] * (x - mean) / sqrt(var + eps) + bias[labels]``.

    Args:
        x: ``[N, C, *]`` activations (NCHW or channels_last; float16/bfloat16/float32/float64).
        labels: ``[N]`` integer class of each sample, in ``[0, num_classes)``.
        weight, bias: ``[num_classes, C]`` per-class scale (gamma) and shift (beta) tables.
        running_mean, running_var: ``[C]`` running statistics, updated in place in training mode; used instead of
            the batch statistics in eval mode. Both or neither.
        training: batch statistics (and a running-statistics update) if True.
        momentum: running-statistics momentum, as in ``nn.BatchNorm2d``.
        eps: added to the variance (1e-3, as in CPSC-DFKD's generator).
        backend: ``"auto"``, ``"fused"`` or ``"reference"``.
    """
    fn = "class_conditional_batch_norm"
    _checks.tensor(fn, "x", x, ndim=(2, 3, 4, 5), dtypes=_checks.FLOAT_DTYPES)
    _checks.tensor(fn, "weight", weight, ndim=2, dtypes=_checks.FLOAT_DTYPES)
    num_classes, channels = weight.shape
    if x.shape[1] != channels:
        raise ValueError(f"{fn}: argument 'x' must have C = {channels} channels (weight is [num_classes, C]), "
                         f"got shape {tuple(x.shape)}")
    _checks.tensor(fn, "bias", bias, ndim=2, dtypes=_checks.FLOAT_DTYPES)
    _checks.shape(fn, "bias", bias, weight.shape, "the shape of 'weight'")
    _checks.labels(fn, "labels", labels, x.shape[0], num_classes)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fn}: arguments 'running_mean' and 'running_var' must be given together or not at all")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is not None:
            _checks.tensor(fn, name, stat, ndim=1, dtypes=_checks.FLOAT_DTYPES)
            _checks.shape(fn, name, stat, (channels,), "one value per channel")
    _checks.same_device(fn, "x", x, labels=labels, weight=weight, bias=bias, running_mean=running_mean,
                        running_var=running_var)
    _checks.positive(fn, "eps", eps)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{fn}: argument 'momentum' must be a float in [0, 1], got {momentum!r}")
    count = x.numel() // channels if channels else 0
    if training and count <= 1:
        raise ValueError(
            f"{fn}: expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}"
        )
    use_batch_stats = training or running_mean is None
    if not use_fused(fn, backend, x.device, "triton"):
        return class_conditional_batch_norm_reference(
            x, labels, weight, bias, running_mean, running_var, training, momentum, eps
        )
    y, mean, var = cond_norm_fwd(x, labels.to(torch.int64), weight, bias, running_mean, running_var,
                                 use_batch_stats, eps)
    if training:
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y
