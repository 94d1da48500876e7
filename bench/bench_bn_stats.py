"""BN-statistics loss over every BatchNorm of a CIFAR ResNet-34 teacher (36 layers): fused Triton kernels vs the eager
reference (``bn_stats_loss(backend="reference")``) vs ``torch.compile(reference)`` vs ``deepinversion``, the term
DeepInversion's per-layer forward hook computes (CPSC-DFKD's ``DeepInversionFeatureHook``: a mean, a permute +
contiguous copy + biased variance, two norms per layer; its value is checked against ours); forward, backward and
both.

The batch's BatchNorm inputs are captured once (a [512, 3, 32, 32] batch on a GPU) and each provider computes the
summed loss from them, so that the timings hold the loss alone, not the convolutions around it. Bytes are the fused
kernels' traffic: one read of every BatchNorm input forward; one read and one write (dx) backward.

Target (H100, cpsc-dfkd.md §4): fused >= 3x the DeepInversion hooks. On CPU the fused and compile implementations
skip and the others run on a batch of 4.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from bench.conftest import DEVICE, MODES, ON_GPU, PROVIDERS, key_on_gpu, provider_fn, skip_unless_runnable, time_op
from dfkd_fast import bn_stats_loss

BATCH = 512 if ON_GPU else 4
DTYPES = [key_on_gpu(torch.bfloat16), torch.float32] if ON_GPU else [torch.float32]
DEEPINVERSION = "DeepInversion's forward-hook term (mean, permute + contiguous + biased var, two norms) per layer"


def upstream_term(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """DeepInversionFeatureHook's term, as CPSC-DFKD computes it (running statistics cast to the input dtype)."""
    channels = x.shape[1]
    mean = x.mean([0, 2, 3])
    var = x.permute(1, 0, 2, 3).contiguous().view(channels, -1).var(1, unbiased=False)
    return torch.norm(running_var.to(x.dtype) - var, 2) + torch.norm(running_mean.to(x.dtype) - mean, 2)


@functools.lru_cache(maxsize=None)
def _case(dtype: torch.dtype):
    """The BatchNorm inputs of one teacher forward (leaves that require grad) and the loss of each implementation."""
    try:
        from dfkd_fast.models.resnet import resnet34
    except ImportError as exc:
        pytest.skip(f"the model zoo's CIFAR ResNet-34 is not available ({exc})")
    torch.manual_seed(0)
    teacher = resnet34(num_classes=100).to(DEVICE, dtype).eval()
    layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():  # running statistics as a trained teacher has them: not the batch's
        for layer in layers:
            layer.running_mean.normal_(0, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    captured: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach())) for layer in layers]
    with torch.no_grad():
        teacher(torch.randn(BATCH, 3, 32, 32, device=DEVICE, dtype=dtype))
    for handle in handles:
        handle.remove()
    stats = [(layer.running_mean, layer.running_var) for layer in layers]
    inputs = [a.requires_grad_() for a in captured]

    def fused(*acts):  # what BNStatsLoss sums
        return torch.stack([bn_stats_loss(a, rm, rv, backend="fused") for a, (rm, rv) in zip(acts, stats)]).sum()

    def reference(*acts):
        return torch.stack([bn_stats_loss(a, rm, rv, backend="reference") for a, (rm, rv) in zip(acts, stats)]).sum()

    def deepinversion(*acts):  # sum([hook.r_feature for hook in hooks])
        return sum(upstream_term(a, rm, rv) for a, (rm, rv) in zip(acts, stats))

    if dtype == torch.float32:
        with torch.no_grad():
            torch.testing.assert_close(deepinversion(*inputs), reference(*inputs), rtol=1e-4, atol=1e-4)
    fns = {impl: provider_fn(impl, fused, reference) for impl in PROVIDERS}
    return inputs, {**fns, "deepinversion": deepinversion}


@pytest.mark.parametrize("impl", [*PROVIDERS, "deepinversion"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_bn_stats_resnet34(benchmark, dtype, mode, impl):
    skip_unless_runnable(impl)
    if impl == "compile" and not ON_GPU:
        pytest.skip("torch.compile of the 36-layer loss takes over a minute on a CPU: compared on a GPU only")
    inputs, fns = _case(dtype)
    assert len(inputs) == 36, f"ResNet-34 should have 36 BatchNorm2d layers, found {len(inputs)}"
    activation_bytes = sum(a.numel() * a.element_size() for a in inputs)
    time_op(
        benchmark, fns[impl], inputs, mode, op="bn_stats_resnet34", impl=impl,
        impl_note=DEEPINVERSION if impl == "deepinversion" else None, shape=[BATCH, 3, 32, 32],
        bytes_moved={"fwd": activation_bytes, "bwd": 2 * activation_bytes},
    )
