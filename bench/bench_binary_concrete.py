"""binary_concrete_adjacency: the fused kernel (C++ on CPU, CUDA on GPU) vs the eager reference and
torch.compile(reference), forward, backward and both, on symmetric graphs with every node present.

    pytest bench/bench_binary_concrete.py                 # CPU: (64, 128, 128); GPU: (64, 1024, 1024), (4096, 32, 32)
    pytest bench/bench_binary_concrete.py --benchmark-disable   # smoke run: every case once

Bytes for GB/s and roofline (notes/kernels.md section 7, without the 1-byte mask this op does not write): the forward
reads the upper triangle of the logits and writes the adjacency (1.5 x numel x itemsize), the backward reads dy and
the upper triangle of the logits and writes dlogit (2.5 x numel x itemsize).
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench.conftest import DEVICE, MODES, ON_GPU, PROVIDERS, provider_fn, skip_unless_runnable, time_op
from dfkd_fast import binary_concrete_adjacency
from dfkd_fast._backend import extension_missing

SHAPES = [(64, 1024, 1024), (4096, 32, 32)] if ON_GPU else [(64, 128, 128)]
VARIANTS = {"relaxed": {}, "budget": {"ratio": 0.1}}  # budget: keep the top 10% of the pairs of each graph
TAU = 2.0 / 3.0


@functools.lru_cache(maxsize=None)
def _functions(shape: tuple[int, int, int], variant: str):
    """(fused, reference) on one configuration; cached so that all modes share one torch.compile(reference)."""
    counts = torch.full((shape[0],), shape[1], device=DEVICE)
    kw = dict(seed=2024, offset=7, symmetric=True, **VARIANTS[variant])

    def fused(logits):
        return binary_concrete_adjacency(logits, counts, TAU, backend="fused", **kw)

    def reference(logits):
        return binary_concrete_adjacency(logits, counts, TAU, backend="reference", **kw)

    return fused, reference


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_binary_concrete(benchmark, provider, mode, variant, shape):
    skip_unless_runnable(provider, kind="cpp")
    if provider == "fused" and (reason := extension_missing(DEVICE.type)):
        pytest.skip(reason)
    dtype = torch.float32
    logits = torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True)
    numel_bytes = logits.numel() * logits.element_size()
    fn = provider_fn(provider, *_functions(shape, variant))
    time_op(benchmark, fn, [logits], mode, op=f"binary_concrete[{variant}]", provider=provider, shape=shape,
            bytes_moved={"fwd": 1.5 * numel_bytes, "bwd": 2.5 * numel_bytes})
