"""supcon_loss: the fused Triton kernel vs the eager reference vs torch.compile(reference).

The CPSC-DFKD call: ``supcon_loss(features [N/2, 2, D], labels)`` (student and teacher views), so N anchors meet
N contrast rows. Work: forward 2 N^2 D FLOPs, backward about 6 N^2 D (the flash-attention convention: the logits
recomputed once, then dL/da and dL/dc; the kernel recomputes the logits in both of its passes, 8 N^2 D in all).

    pytest bench/bench_supcon.py --benchmark-autosave          # on a GPU: N in {512, 2048, 16384, 65536}
    pytest bench/bench_supcon.py --benchmark-disable           # on a CPU: one small size, eager and compile only

The eager reference and its compiled twin hold several N x N fp32 matrices: they are skipped at N = 65536, where one
such matrix alone is 17 GB.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import DEVICE, MODES, ON_GPU, PROVIDERS, provider_fn, skip_unless_runnable, time_op
from dfkd_fast.ops.supcon import supcon_loss
from dfkd_fast.reference.supcon import supcon_loss_reference

TEMPERATURE = 0.07
NUM_CLASSES = 100  # CIFAR-100-like condition labels

if ON_GPU:
    SIZES = [(n, d) for n in (512, 2048, 16384, 65536) for d in (128, 512)]
    DTYPES = [torch.float32, torch.bfloat16]
else:
    SIZES = [(256, 64)]
    DTYPES = [torch.float32]
REFERENCE_MAX_N = 16384  # beyond this the reference's N x N matrices do not fit in 80 GB


def _fused(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return supcon_loss(features, labels, temperature=TEMPERATURE, backend="fused")


def _reference(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return supcon_loss_reference(features, labels, temperature=TEMPERATURE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("n,dim", SIZES, ids=lambda v: str(v))
def test_supcon(benchmark, n, dim, dtype, provider, mode):
    skip_unless_runnable(provider)
    if provider != "fused" and n > REFERENCE_MAX_N:
        pytest.skip(f"the reference needs several {n}x{n} fp32 matrices ({n * n * 4 / 2**30:.0f} GiB each)")
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    features = torch.randn(n // 2, 2, dim, device=DEVICE, generator=gen)
    features = torch.nn.functional.normalize(features, dim=-1).to(dtype).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, (n // 2,), device=DEVICE, generator=gen)
    fn = provider_fn(provider, _fused, _reference)
    time_op(
        benchmark,
        fn,
        (features, labels),
        mode,
        op="supcon_loss",
        provider=provider,
        shape=(n, dim),
        flops={"fwd": 2.0 * n * n * dim, "bwd": 6.0 * n * n * dim},
    )
