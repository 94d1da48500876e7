"""Class-conditional batch norm (train mode, batch statistics, running-statistics update): fused Triton kernels vs
the eager reference vs ``torch.compile(reference)``, forward, backward and both.

Bytes are the fused kernels' traffic, the floor for any implementation: forward 3 passes over x (x read for the
statistics, x read and y written by the normalisation), backward 5 (x and dy read for the per-sample sums, x and dy
read and dx written); the tables and statistics are O(K·C). The harness turns them into GB/s and the percentage of
the measured device-to-device bandwidth (``pct_measured_bw``).

Targets (H100, kernels.md §7), at (256, 128, 32, 32) bf16: forward >= 85 % and backward >= 70 % of the measured
bandwidth, both >= 2x eager. On CPU the fused provider skips (the interpreter is a test path) and one small fp32
case keeps the suite runnable.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from bench.conftest import DEVICE, MODES, ON_GPU, PROVIDERS, provider_fn, skip_unless_runnable, time_op
from dfkd_fast import class_conditional_batch_norm
from dfkd_fast.reference.cond_norm import class_conditional_batch_norm_reference

NUM_CLASSES = 100  # CIFAR-100
SHAPES = [(256, 128, 32, 32), (512, 128, 8, 8), (512, 64, 32, 32)] if ON_GPU else [(16, 32, 8, 8)]
DTYPES = [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32]


@functools.lru_cache(maxsize=None)
def _case(shape: tuple[int, ...], dtype: torch.dtype):
    """Inputs and the fused/reference callables of one case, shared by its modes and providers (so that
    ``provider_fn`` compiles the reference once per case)."""
    g = torch.Generator().manual_seed(0)
    channels = shape[1]
    x = torch.randn(shape, generator=g).to(DEVICE, dtype).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, (shape[0],), generator=g).to(DEVICE)
    weight = (1 + 0.1 * torch.randn(NUM_CLASSES, channels, generator=g)).to(DEVICE, dtype).requires_grad_()
    bias = (0.1 * torch.randn(NUM_CLASSES, channels, generator=g)).to(DEVICE, dtype).requires_grad_()
    running_mean = torch.zeros(channels, device=DEVICE)
    running_var = torch.ones(channels, device=DEVICE)

    def fused(x, weight, bias):
        return class_conditional_batch_norm(x, labels, weight, bias, running_mean, running_var, training=True,
                                            backend="fused")

    def reference(x, weight, bias):
        return class_conditional_batch_norm_reference(x, labels, weight, bias, running_mean, running_var, True)

    return (x, weight, bias), fused, reference


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cond_norm(benchmark, shape, dtype, mode, provider):
    skip_unless_runnable(provider)
    inputs, fused, reference = _case(shape, dtype)
    tensor_bytes = math.prod(shape) * torch.finfo(dtype).bits // 8
    time_op(
        benchmark, provider_fn(provider, fused, reference), inputs, mode,
        op="cond_norm", provider=provider, shape=shape,
        bytes_moved={"fwd": 3 * tensor_bytes, "bwd": 5 * tensor_bytes},
    )
