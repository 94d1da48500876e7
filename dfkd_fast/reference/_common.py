"""Helpers shared by the reference implementations."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reductions run in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dimension but the channel dimension 1 (what BatchNorm reduces over)."""
    return [0, *range(2, x.dim())]
