"""binary_concrete_adjacency: the fused kernel (C++ on CPU, CUDA on GPU) vs the eager reference,
torch.compile(reference), and the code a user would write instead, forward, backward and both, on symmetric graphs
with every node present, tau 0.5, relaxed and with the ratio-0.1 budget.

    pytest bench/bench_binary_concrete.py                 # CPU: (64, 128, 128); GPU: (64, 1024, 1024), (4096, 32, 32)
    pytest bench/bench_binary_concrete.py --benchmark-disable   # smoke run: every case once
    OMP_NUM_THREADS=1 python -m bench.bench_binary_concrete     # CPU: fused vs the baselines, interleaved, min of 30

The user's baselines (test_binary_concrete_baseline, ``extra_info["impl"]`` naive_torch / relaxed_bernoulli beside
fused / eager / compile, the same op, shape and mode keys, so that each ratio names its baseline):

* ``naive_torch``: ``u = torch.rand_like(l)``; ``sigmoid((l + log u - log1p(-u)) / tau)``, the node mask, ``triu(1)``
  mirrored, and for the budget ``torch.topk`` of each graph's upper triangle scattered back;
* ``relaxed_bernoulli``: ``torch.distributions.RelaxedBernoulli(tau, logits=l).rsample()``, then the same mask,
  symmetrisation and topk.

Bytes for GB/s and roofline (notes/kernels.md section 7, without the 1-byte mask this op does not write): the forward
reads the upper triangle of the logits and writes the adjacency (1.5 x numel x itemsize), the backward reads dy
(twice, mirrored) and the relaxed output's upper triangle and writes dlogit (2.5 x numel x itemsize).
"""

from __future__ import annotations

import functools
from typing import Callable

import pytest
import torch

from bench.conftest import DEVICE, MODES, ON_GPU, PROVIDERS, provider_fn, skip_unless_runnable, time_op
from dfkd_fast import binary_concrete_adjacency
from dfkd_fast._backend import extension_missing
from dfkd_fast.reference.binary_concrete import edge_budget, node_mask

SHAPES = [(64, 1024, 1024), (4096, 32, 32)] if ON_GPU else [(64, 128, 128)]
VARIANTS = {"relaxed": {}, "budget": {"ratio": 0.1}}  # budget: keep the top 10% of the pairs of each graph
TAU = 0.5
BASELINES = ("naive_torch", "relaxed_bernoulli")
ROUNDS = None if ON_GPU else 7  # medians of 7 on CPU: the ratios to the baselines are the point here


def _counts(shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.full((shape[0],), shape[1], device=DEVICE)


@functools.lru_cache(maxsize=None)
def _functions(shape: tuple[int, int, int], variant: str):
    """(fused, reference) on one configuration; cached so that all modes share one torch.compile(reference)."""
    counts = _counts(shape)
    kw = dict(seed=2024, offset=7, symmetric=True, **VARIANTS[variant])

    def fused(logits):
        return binary_concrete_adjacency(logits, counts, TAU, backend="fused", **kw)

    def reference(logits):
        return binary_concrete_adjacency(logits, counts, TAU, backend="reference", **kw)

    return fused, reference


def _as_user_would(relaxed: Callable[[torch.Tensor], torch.Tensor], shape, variant: str):
    """The rest of the op in plain torch around a user's relaxed sampler: node mask, upper triangle mirrored, and
    for the budget torch.topk of each graph's upper triangle scattered back (ties as topk breaks them)."""
    counts = _counts(shape)
    n = shape[1]
    nodes = node_mask(counts, n)
    pairs = nodes[:, :, None] & nodes[:, None, :]
    budget = edge_budget(counts, True, ratio=VARIANTS[variant].get("ratio"))
    k_max = None if budget is None else int(budget.max())
    in_budget = None if budget is None else torch.arange(k_max, device=DEVICE) < budget[:, None]

    def sample(logits):
        upper = (relaxed(logits) * pairs).triu(1)
        if budget is not None:
            flat = upper.flatten(1)
            values, index = flat.topk(k_max, dim=1)
            upper = torch.zeros_like(flat).scatter(1, index, values * in_budget).view_as(upper)
        return upper + upper.transpose(1, 2)

    return sample


def _naive_relaxed(logits):
    u = torch.rand_like(logits)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / TAU)


def _relaxed_bernoulli(logits):
    return torch.distributions.RelaxedBernoulli(torch.tensor(TAU, device=logits.device), logits=logits).rsample()


@functools.lru_cache(maxsize=None)
def _baseline(impl: str, shape: tuple[int, int, int], variant: str):
    return _as_user_would(_naive_relaxed if impl == "naive_torch" else _relaxed_bernoulli, shape, variant)


def _bytes(logits: torch.Tensor) -> dict[str, float]:
    numel_bytes = logits.numel() * logits.element_size()
    return {"fwd": 1.5 * numel_bytes, "bwd": 2.5 * numel_bytes}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_binary_concrete(benchmark, provider, mode, variant, shape):
    skip_unless_runnable(provider, kind="cpp")
    if provider == "fused" and (reason := extension_missing(DEVICE.type)):
        pytest.skip(reason)
    logits = torch.randn(shape, device=DEVICE, dtype=torch.float32, requires_grad=True)
    fn = provider_fn(provider, *_functions(shape, variant))
    time_op(benchmark, fn, [logits], mode, op=f"binary_concrete[{variant}]", provider=provider, shape=shape,
            bytes_moved=_bytes(logits), rounds=ROUNDS)
    benchmark.extra_info["impl"] = provider


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", BASELINES)
def test_binary_concrete_baseline(benchmark, impl, mode, variant, shape):
    logits = torch.randn(shape, device=DEVICE, dtype=torch.float32, requires_grad=True)
    time_op(benchmark, _baseline(impl, shape, variant), [logits], mode, op=f"binary_concrete[{variant}]",
            provider=impl, shape=shape, bytes_moved=_bytes(logits), rounds=ROUNDS)
    benchmark.extra_info.update(impl=impl, baseline=True)


def test_baselines_compute_the_same_law():
    """The baselines sample what the op samples: symmetric, zero diagonal, values in [0, 1], the budget's edge count,
    and the same mean as the fused op over a batch (different noise streams, the same distribution)."""
    shape = (16, 24, 24)
    logits = torch.randn(shape, device=DEVICE)
    for variant in VARIANTS:
        ours = binary_concrete_adjacency(logits, _counts(shape), TAU, seed=5, **VARIANTS[variant])
        for impl in BASELINES:
            adj = _baseline(impl, shape, variant)(logits)
            assert torch.equal(adj, adj.transpose(1, 2)) and (adj.diagonal(dim1=1, dim2=2) == 0).all()
            assert ((adj >= 0) & (adj <= 1)).all()
            if variant == "budget":
                assert torch.equal((adj != 0).sum((1, 2)), (ours != 0).sum((1, 2)))
            assert abs(adj.mean().item() - ours.mean().item()) < 0.02, (impl, variant)


def _interleaved_ratios(rounds: int = 30) -> None:
    """fused / naive_torch / relaxed_bernoulli called in turn, the minimum over ``rounds`` of the thread's CPU time:
    on a shared machine the least disturbed round of each, measured side by side."""
    import time

    torch.set_num_threads(1)
    shape = SHAPES[0]
    logits = torch.randn(shape, device=DEVICE, requires_grad=True)
    grad = torch.randn(shape, device=DEVICE)
    for variant in VARIANTS:
        impls = {"fused": _functions(shape, variant)[0]} | {impl: _baseline(impl, shape, variant) for impl in BASELINES}
        best: dict[tuple[str, str], float] = {}
        for _ in range(rounds):
            for impl, fn in impls.items():
                t0 = time.thread_time()
                fn(logits)
                t1 = time.thread_time()
                torch.autograd.grad(fn(logits), logits, grad)
                t2 = time.thread_time()
                for mode, t in (("fwd", t1 - t0), ("fwd+bwd", t2 - t1)):
                    best[impl, mode] = min(best.get((impl, mode), t), t)
        for mode in ("fwd", "fwd+bwd"):
            fused = best["fused", mode]
            ratios = "  ".join(f"{impl} {best[impl, mode] * 1e3:.2f} ms ({best[impl, mode] / fused:.2f}x)"
                               for impl in BASELINES)
            print(f"{variant:8s} {mode:8s} fused {fused * 1e3:.2f} ms  {ratios}")


if __name__ == "__main__":  # OMP_NUM_THREADS=1 python -m bench.bench_binary_concrete (CPU only: thread CPU time)
    _interleaved_ratios()
