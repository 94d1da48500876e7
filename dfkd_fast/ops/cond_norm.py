"""class_conditional_batch_norm: batch norm without affine, then a per-sample ``gamma[label]``, ``beta[label]``.

Custom ops ``dfkd_fast::cond_norm_fwd`` (output and the fp32 per-channel mean and biased variance),
``dfkd_fast::cond_norm_bwd`` (dx and the per-class dgamma/dbeta tables) and ``dfkd_fast::cond_norm_update_running``
(the in-place running-statistics update), which launch the Triton kernels of :mod:`dfkd_fast.kernels.cond_norm`;
their fake kernels and autograd formula, and the validated functional API. The maths is in
:mod:`dfkd_fast.reference.cond_norm`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfkd_fast import _checks
from dfkd_fast._backend import use_fused
from dfkd_fast.ops import _autograd
from dfkd_fast.reference._common import compute_dtype
from dfkd_fast.reference.cond_norm import class_conditional_batch_norm_reference


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
    from dfkd_fast.kernels.cond_norm import cond_norm_forward

    return cond_norm_forward(x, labels, weight, bias, running_mean, running_var, use_batch_stats, eps)


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
    from dfkd_fast.kernels.cond_norm import cond_norm_backward

    return cond_norm_backward(grad_y, x, labels, weight, mean, var, use_batch_stats, eps)


@cond_norm_bwd.register_fake
def _(grad_y, x, labels, weight, mean, var, use_batch_stats, eps):
    return torch.empty_like(x), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x, labels, weight, _bias, _rm, _rv, use_batch_stats, eps = inputs
    _, mean, var = output
    # x and O(C) statistics only: x̂ is recomputed in the backward
    ctx.save_for_backward(x, labels, weight, mean, var)
    ctx.params = (use_batch_stats, eps)
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx, grad_y, _grad_mean, _grad_var):
    dx, dweight, dbias = _apply_bwd(grad_y, *ctx.saved_tensors, *ctx.params)
    return dx, None, dweight, dbias, None, None, None, None


def _setup_bwd(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])  # grad_y, x, labels, weight, mean, var
    ctx.params = inputs[6:]


def _double_backward(ctx, grad_dx, grad_dweight, grad_dbias):
    grad_y, x, labels, weight, mean, var = ctx.saved_tensors
    use_batch_stats, eps = ctx.params
    stats = (None, None) if use_batch_stats else (mean, var)

    def reference(x_, weight_, bias_):
        return class_conditional_batch_norm_reference(x_, labels, weight_, bias_, *stats, training=False, eps=eps)

    # y is linear in bias: the value of the bias (not an input of the backward) changes no derivative
    gy, gx, gw, _ = _autograd.reference_double_backward(reference, grad_y, (x, weight, torch.zeros_like(weight)),
                                                        (grad_dx, grad_dweight, grad_dbias))
    return gy, gx, None, gw, None, None, None, None


_apply_fwd = _autograd.register(cond_norm_fwd, _setup_context, _backward)
_apply_bwd = _autograd.register(cond_norm_bwd, _setup_bwd, _double_backward)


# A separate op: an op with an autograd formula must not mutate its inputs.
@torch.library.custom_op("dfkd_fast::cond_norm_update_running", mutates_args=("running_mean", "running_var"))
def cond_norm_update_running(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: int, momentum: float
) -> None:
    """nn.BatchNorm2d's running-statistics update (``var`` is the biased batch variance of ``count`` values)."""
    from dfkd_fast.kernels.cond_norm import update_running_stats

    update_running_stats(running_mean, running_var, mean, var, count, momentum)


@cond_norm_update_running.register_fake
def _(running_mean, running_var, mean, var, count, momentum):
    return None


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
            the batch statistics in eval mode. Both or neither; not ``expand()``ed views when they are updated.
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
    _checks.number_in(fn, "momentum", momentum, 0.0, 1.0, "[0, 1]")
    count = x.numel() // channels if channels else 0
    if training and count <= 1:
        raise ValueError(
            f"{fn}: expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}"
        )
    updates_running = training and running_mean is not None
    if updates_running:
        _checks.not_expanded(fn, "running_mean", running_mean)
        _checks.not_expanded(fn, "running_var", running_var)
        if _checks.in_vmap():
            raise RuntimeError(f"{fn}: cannot update 'running_mean'/'running_var' in place under torch.func.vmap (one "
                             "update per sample); use training=False, no running statistics, or no vmap")
    for name, value in (("x", x), ("weight", weight), ("bias", bias), ("running_mean", running_mean),
                        ("running_var", running_var)):
        if value is not None:
            _checks.finite(fn, name, value)
    use_batch_stats = training or running_mean is None
    if not use_fused(fn, backend, x.device, "triton"):
        return class_conditional_batch_norm_reference(
            x, labels, weight, bias, running_mean, running_var, training, momentum, eps
        )
    y, mean, var = _apply_fwd(x, labels.to(torch.int64), weight, bias, running_mean, running_var,
                                     use_batch_stats, float(eps))
    if updates_running:
        cond_norm_update_running(running_mean, running_var, mean, var, count, float(momentum))
    return y
