"""supcon_loss: the fused Triton kernel vs the eager reference vs torch.compile(reference), and the two losses a user
would run instead: ``pml`` = ``pytorch_metric_learning.losses.SupConLoss(temperature=T)`` on the 2B flattened views,
and ``supcontrast`` = the N x N eager loss of the SupContrast code that CPSC-DFKD runs (written out below from its
formula). Both give our value (checked once per case in float32; same temperature, base temperature = T, features
L2-normalised); ``pml`` is skipped when pytorch-metric-learning is not installed (the dev extra has it).

The CPSC-DFKD call: ``supcon_loss(features [N/2, 2, D], labels)`` (student and teacher views), so N anchors meet
N contrast rows. Work: forward 2 N^2 D FLOPs, backward about 6 N^2 D (the flash-attention convention: the logits
recomputed once, then dL/da and dL/dc; the kernel recomputes the logits in both of its passes, 8 N^2 D in all).

    pytest bench/bench_supcon.py --benchmark-autosave          # on a GPU: N in {512, 2048, 16384, 65536}
    pytest bench/bench_supcon.py --benchmark-disable           # on a CPU: one small size, no fused case

The eager reference, its compiled twin and both baselines hold several N x N matrices: they are skipped at N = 65536,
where one fp32 such matrix alone is 17 GB.
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench.conftest import DEVICE, MODES, ON_GPU, PROVIDERS, key_on_gpu, provider_fn, skip_unless_runnable, time_op
from dfkd_fast.ops.supcon import supcon_loss
from dfkd_fast.reference.supcon import supcon_loss_reference

TEMPERATURE = 0.07
NUM_CLASSES = 100  # CIFAR-100-like condition labels

if ON_GPU:  # the key cases (notes/kernels.md section 7) first: bench/gpu_session.sh runs `-m key` before the rest
    CASES = [key_on_gpu(16384, 128, torch.bfloat16), key_on_gpu(65536, 128, torch.bfloat16)] + [
        (n, d, dt) for n in (512, 2048, 16384, 65536) for d in (128, 512) for dt in (torch.float32, torch.bfloat16)
        if (n, d, dt) not in ((16384, 128, torch.bfloat16), (65536, 128, torch.bfloat16))]
else:
    CASES = [(256, 64, torch.float32)]
BASELINES = {
    "pml": "pytorch_metric_learning.losses.SupConLoss(temperature=T) on the 2B flattened views",
    "supcontrast": "the SupContrast N x N eager loss (HobbitLong/SupContrast's formula, as CPSC-DFKD runs it)",
}
REFERENCE_MAX_N = 16384  # beyond this the reference's N x N matrices do not fit in 80 GB


def _fused(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return supcon_loss(features, labels, temperature=TEMPERATURE, backend="fused")


def _reference(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return supcon_loss_reference(features, labels, temperature=TEMPERATURE)


def supcontrast_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = TEMPERATURE,
                     base_temperature: float = TEMPERATURE) -> torch.Tensor:
    """SupContrast's SupConLoss (contrast_mode='all'), the plain N x N formula: a label mask tiled over the views,
    row-max-subtracted logits, the self-pairs masked out, the mean log-probability of the positives."""
    batch, views = features.shape[:2]
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)  # [views * batch, D], view-major
    mask = torch.eq(labels[:, None], labels[None, :]).float().repeat(views, views)
    logits = torch.matmul(contrast, contrast.T) / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = torch.ones_like(mask).scatter_(1, torch.arange(views * batch, device=features.device)[:, None], 0)
    mask = mask * not_self
    exp_logits = torch.exp(logits) * not_self
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    positives = mask.sum(1)
    mean_log_prob_pos = (mask * log_prob).sum(1) / torch.where(positives < 1e-6, 1.0, positives)
    return (-(temperature / base_temperature) * mean_log_prob_pos).view(views, batch).mean()


@functools.lru_cache(maxsize=None)
def _pml_loss():
    losses = pytest.importorskip("pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed")
    loss = losses.SupConLoss(temperature=TEMPERATURE)

    def pml(features, labels):  # the library's call: [2B, D] embeddings, one label each
        return loss(torch.cat(torch.unbind(features, dim=1), dim=0), labels.repeat(features.shape[1]))

    return pml


def _impl_fn(impl: str):
    if impl == "pml":
        return _pml_loss()
    if impl == "supcontrast":
        return supcontrast_loss
    return provider_fn(impl, _fused, _reference)


@functools.lru_cache(maxsize=None)
def _inputs(n: int, dim: int, dtype: torch.dtype):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    features = torch.randn(n // 2, 2, dim, device=DEVICE, generator=gen)
    features = torch.nn.functional.normalize(features, dim=-1).to(dtype).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, (n // 2,), device=DEVICE, generator=gen)
    return features, labels


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", [*PROVIDERS, *BASELINES])
@pytest.mark.parametrize("n,dim,dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_supcon(benchmark, n, dim, dtype, impl, mode):
    skip_unless_runnable(impl)
    if impl != "fused" and n > REFERENCE_MAX_N:
        pytest.skip(f"{impl} needs several {n}x{n} matrices ({n * n * 4 / 2**30:.0f} GiB each in fp32)")
    features, labels = _inputs(n, dim, dtype)
    fn = _impl_fn(impl)
    if impl in BASELINES and dtype == torch.float32:  # the baseline computes our loss (once per case: mode fwd)
        if mode == "fwd":
            with torch.no_grad():
                torch.testing.assert_close(fn(features, labels), _reference(features, labels), rtol=1e-4, atol=1e-4)
    time_op(
        benchmark,
        fn,
        (features, labels),
        mode,
        op="supcon_loss",
        impl=impl,
        impl_note=BASELINES.get(impl),
        shape=(n, dim),
        flops={"fwd": 2.0 * n * n * dim, "bwd": 6.0 * n * n * dim},
    )
