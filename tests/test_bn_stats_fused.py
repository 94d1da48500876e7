"""Issue 4: the fused (Triton) batch-norm statistics loss and the BNStatsLoss hooks against the float64 reference.

On CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by the root conftest), so shapes are
small; the ``cuda`` tests run the same checks at ResNet sizes on a GPU.

Tolerances, as max|fused - ref| / max|ref| against the float64 reference on the same input values: fp32 1e-5 (loss
and dx); fp16/bf16 inputs: loss 1e-5 (statistics are accumulated in fp32), dx 2e-3 / 1.6e-2 (one store rounding,
truncated by the interpreter for bf16).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfkd_fast import bn_stats_loss
from dfkd_fast.nn import BNStatsLoss
from dfkd_fast.ops import bn_stats as bn_stats_ops
from dfkd_fast.reference.bn_stats import bn_stats_loss_reference
from helpers import layout, rel_err

try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a dev extra
    given = None

kernels = pytest.importorskip("dfkd_fast.kernels.cond_norm", reason="triton is not importable")

DX_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_case(shape, dtype=torch.float32, offset=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2)
    scale = torch.rand(channels, generator=g) * 2 + 0.5
    shift = offset + torch.randn(channels, generator=g)
    x = (torch.randn(shape, generator=g) * scale.view(view) + shift.view(view)).to(dtype)
    running_mean = shift + 0.3 * torch.randn(channels, generator=g)
    running_var = scale**2 * (0.5 + torch.rand(channels, generator=g))
    return x, running_mean, running_var


def loss_and_grad(fn, x, running_mean, running_var):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, running_mean, running_var)
    (dx,) = torch.autograd.grad(loss, x)
    return loss, dx


def check(x, running_mean, running_var, *, x_layout="contiguous", dx_tol=1e-5):
    d = torch.float64
    loss, dx = loss_and_grad(lambda *a: bn_stats_loss(*a, backend="fused"), layout(x, x_layout), running_mean,
                             running_var)
    ref_loss, ref_dx = loss_and_grad(bn_stats_loss_reference, x.to(d), running_mean.to(d), running_var.to(d))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert dx.dtype == x.dtype and dx.stride() == torch.empty_like(layout(x, x_layout)).stride()
    assert rel_err(loss, ref_loss) <= 1e-5, f"loss: {loss.item()} vs {ref_loss.item()}"
    err = rel_err(dx, ref_dx)
    assert err <= dx_tol, f"dx: relative error {err:.3g} > {dx_tol:g}"


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of at most 16 elements: many units, spatial and channel blocks and statistics partials."""
    monkeypatch.setattr(kernels, "MAX_TILE", 16)


@pytest.mark.parametrize(
    "shape, x_layout",
    [
        ((2, 3, 5, 7), "contiguous"),  # C = 3, N*H*W = 70
        ((1, 4, 3, 3), "contiguous"),  # N = 1
        ((3, 6, 4, 4), "channels_last"),
        ((3, 5, 4, 6), "sliced"),
        ((3, 4, 3, 5), "transposed"),
        ((9, 5), "contiguous"),  # BatchNorm1d input [N, C]
        ((4, 3, 10), "contiguous"),  # BatchNorm1d input [N, C, L]
    ],
)
def test_matches_reference(shape, x_layout):
    check(*make_case(shape), x_layout=x_layout)


@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
def test_many_tiles(small_tiles, x_layout):
    check(*make_case((3, 5, 3, 5)), x_layout=x_layout)


def test_large_offset_statistics():
    """mean/std = 50: the two-pass shifted sums keep the fp32 variance accurate."""
    check(*make_case((4, 3, 6, 6), offset=50.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    x, rm, rv = make_case((4, 5, 3, 3), dtype=dtype)
    check(x, rm, rv, dx_tol=DX_TOL[dtype])
    check(x, rm.to(dtype), rv.to(dtype), dx_tol=DX_TOL[dtype])  # running statistics in the activation dtype


def test_strided_running_stats():
    x, rm, rv = make_case((3, 4, 2, 3))
    check(x, torch.stack([rm, rm], 1)[:, 0], torch.stack([rv, rv], 1)[:, 1])


def test_zero_gap_has_zero_subgradient():
    """A gap of exactly 0 contributes 0 to the loss and (as autograd's norm) 0 to the gradient."""
    x = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(3, 2, 2, 2).contiguous()
    zero_var = torch.zeros(2)
    loss, dx = loss_and_grad(lambda *a: bn_stats_loss(*a, backend="fused"), x, torch.tensor([1.5, -2.0]), zero_var)
    assert loss.item() == 0 and torch.all(dx == 0)
    # only the mean gap is non-zero: the variance term must not produce NaN
    check(x, torch.tensor([1.0, 0.0]), zero_var)


def test_gradcheck():
    x, rm, rv = (t.double() for t in make_case((2, 3, 2, 2)))
    assert torch.autograd.gradcheck(lambda x: bn_stats_loss(x, rm, rv, backend="fused"), (x.requires_grad_(),))


def test_opcheck():
    x, rm, rv = make_case((3, 4, 2, 3))
    torch.library.opcheck(bn_stats_ops.bn_stats_fwd, (x.requires_grad_(), rm, rv))
    _, mean, var = bn_stats_ops.bn_stats_fwd(x.detach(), rm, rv)
    torch.library.opcheck(bn_stats_ops.bn_stats_bwd, (torch.tensor(0.7), x.detach(), rm, rv, mean, var))


def test_compile_fullgraph_parity():
    x, rm, rv = make_case((3, 4, 3, 3))

    def f(x, rm, rv):
        return 2 * bn_stats_loss(x, rm, rv, backend="fused")

    got = loss_and_grad(torch.compile(f, fullgraph=True), x, rm, rv)
    want = loss_and_grad(f, x, rm, rv)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


if given is not None:

    @given(
        n=st.integers(1, 5), c=st.integers(1, 6), h=st.integers(1, 5), w=st.integers(1, 5),
        x_layout=st.sampled_from(["contiguous", "channels_last", "sliced"]), seed=st.integers(0, 2**16),
    )
    def test_hypothesis_shapes(n, c, h, w, x_layout, seed):
        check(*make_case((n, c, h, w), seed=seed), x_layout=x_layout)


# ---------------------------------------------------------------------------------------------------------------
# BNStatsLoss: hooks on every BatchNorm of a model


def small_teacher() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 5), nn.BatchNorm1d(5),
    )
    with torch.no_grad():  # running statistics that differ from the batch's
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_bn_stats_module_matches_reference():
    teacher = small_teacher()
    images = torch.randn(4, 3, 5, 5)
    results = []
    for backend in ("fused", "reference"):
        hooks = BNStatsLoss(teacher, backend=backend)
        assert hooks.num_layers == 3
        x = images.clone().requires_grad_()
        teacher(x)
        loss = hooks()
        results.append((loss, torch.autograd.grad(loss, x)[0]))
        hooks.remove()
    (loss, dx), (ref_loss, ref_dx) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-4, atol=1e-6)


def test_bn_stats_module_pause_and_remove():
    teacher = small_teacher()
    hooks = BNStatsLoss(teacher, backend="fused")
    images = torch.randn(2, 3, 5, 5)
    with hooks.paused(), torch.no_grad():
        teacher(images)
    with pytest.raises(RuntimeError, match="no BatchNorm statistics collected"):
        hooks()
    teacher(images)
    first = hooks()
    teacher(images)
    assert torch.equal(hooks(), first), "each call must return only the terms of the forwards since the last call"
    hooks.remove()
    teacher(images)
    with pytest.raises(RuntimeError):
        hooks()


# ---------------------------------------------------------------------------------------------------------------
# GPU: ResNet sizes, bf16, determinism (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(512, 64, 32, 32), (512, 512, 4, 4), (512, 3, 32, 32), (7, 5, 33, 31)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
def test_cuda_matches_reference(shape, dtype, x_layout):
    x, rm, rv = (t.cuda() for t in make_case(shape, dtype=dtype))
    check(x, rm, rv, x_layout=x_layout, dx_tol=1e-5 if dtype == torch.float32 else 8e-3)


@pytest.mark.cuda
def test_cuda_deterministic():
    x, rm, rv = (t.cuda() for t in make_case((512, 128, 16, 16), dtype=torch.bfloat16))
    first = loss_and_grad(lambda *a: bn_stats_loss(*a, backend="fused"), x, rm, rv)
    for _ in range(3):
        again = loss_and_grad(lambda *a: bn_stats_loss(*a, backend="fused"), x, rm, rv)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
