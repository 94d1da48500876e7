"""bn_stats_loss: the DeepInversion batch-norm statistics loss of one BatchNorm input.

Custom ops ``dfkd_fast::bn_stats_fwd`` (loss and the fp32 per-channel mean and biased variance, from one read of
the input) and ``dfkd_fast::bn_stats_bwd`` (dx, one elementwise pass), which launch the Triton kernels of
:mod:`dfkd_fast.kernels.cond_norm`; their fake kernels and autograd formula, and the validated functional API.
The maths is in :mod:`dfkd_fast.reference.bn_stats`; the hooks that apply it to every BatchNorm of a model are
:class:`dfkd_fast.nn.BNStatsLoss`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfkd_fast import _checks
from dfkd_fast._backend import use_fused
from dfkd_fast.ops import _autograd
from dfkd_fast.reference._common import compute_dtype
from dfkd_fast.reference.bn_stats import bn_stats_loss_reference


@torch.library.custom_op("dfkd_fast::bn_stats_fwd", mutates_args=())
def bn_stats_fwd(x: Tensor, running_mean: Tensor, running_var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, mean[C], var[C]) in the compute dtype, from one read of x."""
    from dfkd_fast.kernels.cond_norm import bn_stats_forward

    return bn_stats_forward(x, running_mean, running_var)


@bn_stats_fwd.register_fake
def _(x, running_mean, running_var):
    acc = compute_dtype(x.dtype)
    return x.new_empty((), dtype=acc), x.new_empty(x.shape[1], dtype=acc), x.new_empty(x.shape[1], dtype=acc)


@torch.library.custom_op("dfkd_fast::bn_stats_bwd", mutates_args=())
def bn_stats_bwd(
    grad_loss: Tensor, x: Tensor, running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor
) -> Tensor:
    """dx = dL · [u_mean / M + 2 u_var (x - mean) / M], u = the unit vectors of the two gaps (0 for a zero gap)."""
    from dfkd_fast.kernels.cond_norm import bn_stats_backward

    return bn_stats_backward(grad_loss, x, running_mean, running_var, mean, var)


@bn_stats_bwd.register_fake
def _(grad_loss, x, running_mean, running_var, mean, var):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output[1], output[2])  # x, the running and the batch statistics
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_loss, _grad_mean, _grad_var):
    return _apply_bwd(grad_loss, *ctx.saved_tensors), None, None


def _setup_bwd(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])  # grad_loss, x, running_mean, running_var


def _double_backward(ctx, grad_dx):
    grad_loss, x, running_mean, running_var = ctx.saved_tensors
    gg, gx = _autograd.reference_double_backward(
        lambda x_: bn_stats_loss_reference(x_, running_mean, running_var), grad_loss, (x,), (grad_dx,)
    )
    return gg, gx, None, None, None, None


_apply_fwd = _autograd.register(bn_stats_fwd, _setup_context, _backward)
_apply_bwd = _autograd.register(bn_stats_bwd, _setup_bwd, _double_backward)


def bn_stats_loss(
    x: Tensor, running_mean: Tensor, running_var: Tensor, *, backend: str | None = None
) -> Tensor:
    """``||mean(x) - running_mean||_2 + ||var(x) - running_var||_2`` for one BatchNorm input ``x [N, C, *]``.

    Mean and biased variance are taken over every dimension but the channel, in float32 (float64 for float64
    input). The running statistics receive no gradient. Returns a scalar in the compute dtype.
    """
    fn = "bn_stats_loss"
    _checks.tensor(fn, "x", x, ndim=(2, 3, 4, 5), dtypes=_checks.FLOAT_DTYPES)
    channels = x.shape[1]
    if x.numel() == 0:
        raise ValueError(f"{fn}: argument 'x' must be non-empty, got shape {tuple(x.shape)}")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        _checks.tensor(fn, name, stat, ndim=1, dtypes=_checks.FLOAT_DTYPES)
        _checks.shape(fn, name, stat, (channels,), "one value per channel of 'x'")
    _checks.same_device(fn, "x", x, running_mean=running_mean, running_var=running_var)
    _checks.finite(fn, "x", x)
    if use_fused(fn, backend, x.device, "triton"):
        return _apply_fwd(x, running_mean.detach(), running_var.detach())[0]
    return bn_stats_loss_reference(x, running_mean.detach(), running_var.detach())
