"""Class-conditional batch norm (train mode, batch statistics, running-statistics update): fused Triton kernels vs
the eager reference vs ``torch.compile(reference)`` vs ``upstream``, CPSC-DFKD's module (``BatchNorm2d(C, eps=1e-3,
affine=False)`` then per-sample gamma / beta from two ``nn.Embedding(num_classes, C)`` tables; its value is checked
against ours once per case), forward, backward and both.

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

from torch import nn

from bench.conftest import DEVICE, MODES, ON_GPU, PROVIDERS, key_on_gpu, provider_fn, skip_unless_runnable, time_op
from dfkd_fast import class_conditional_batch_norm
from dfkd_fast.reference.cond_norm import class_conditional_batch_norm_reference

NUM_CLASSES = 100  # CIFAR-100
if ON_GPU:  # the key case (notes/kernels.md section 7) first: bench/gpu_session.sh runs `-m key` before the rest
    CASES = [key_on_gpu((256, 128, 32, 32), torch.bfloat16), ((256, 128, 32, 32), torch.float32)] + [
        (s, dt) for s in ((512, 128, 8, 8), (512, 64, 32, 32)) for dt in (torch.float32, torch.bfloat16)]
else:
    CASES = [((16, 32, 8, 8), torch.float32)]
UPSTREAM = "CPSC-DFKD's module: nn.BatchNorm2d(C, eps=1e-3, affine=False), then nn.Embedding gamma / beta"


class UpstreamCBN(nn.Module):
    """CPSC-DFKD's CategoricalConditionalBatchNorm2d: class-agnostic BN, then a per-sample affine from embeddings."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        return self.gamma(labels)[:, :, None, None] * out + self.beta(labels)[:, :, None, None]


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

    # the upstream module, holding the same tables (its BN keeps float32 running statistics, as under autocast)
    module = UpstreamCBN(NUM_CLASSES, channels).to(DEVICE)
    module.gamma.weight.data, module.beta.weight.data = weight.detach().clone(), bias.detach().clone()
    module_inputs = (x, module.gamma.weight, module.beta.weight)

    def upstream(x, gamma, beta):  # gamma / beta are the module's own parameters, listed for the gradients
        return module(x, labels)

    if dtype == torch.float32:
        torch.testing.assert_close(upstream(*module_inputs), reference(x, weight, bias), rtol=1e-4, atol=1e-4)
    return {"fused": ((x, weight, bias), fused), "eager": ((x, weight, bias), reference),
            "compile": ((x, weight, bias), provider_fn("compile", fused, reference)),
            "upstream": (module_inputs, upstream)}


@pytest.mark.parametrize("impl", [*PROVIDERS, "upstream"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,dtype", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v).replace("torch.", ""))
def test_cond_norm(benchmark, shape, dtype, mode, impl):
    skip_unless_runnable(impl)
    inputs, fn = _case(shape, dtype)[impl]
    tensor_bytes = math.prod(shape) * torch.finfo(dtype).bits // 8
    time_op(
        benchmark, fn, inputs, mode,
        op="cond_norm", impl=impl, impl_note=UPSTREAM if impl == "upstream" else None, shape=shape,
        bytes_moved={"fwd": 3 * tensor_bytes, "bwd": 5 * tensor_bytes},
    )
