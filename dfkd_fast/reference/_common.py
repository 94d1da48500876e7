"""Helpers shared by the reference implementations."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reductions run in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dimension but the channel dimension 1 (what BatchNorm reduces over)."""
    return [0, *range(2, x.dim())]


def batch_var_mean(x: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(biased variance, mean) over ``dims``, as ``torch.var_mean(x, dims, correction=0)``, in two passes: the mean,
    then the mean of the centred squares (as stable, never E[x^2] - E[x]^2). On CPU it is 1.1-1.9x faster forward +
    backward than torch.var_mean, whose CPU kernel dominated the non-convolution time of a CPSC step
    (bench/PROFILE.md)."""
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).square().mean(dims)
    return var, mean.view(var.shape)
