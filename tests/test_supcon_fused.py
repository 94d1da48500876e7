"""Acceptance tests of the fused (Triton) supcon backend (issue 3).

On a CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by the root conftest), so every test
here except the ``cuda``-marked ones exercises the real kernel code. The oracle is the plain-PyTorch reference in
float64.

Error measure: ``rel_err(x, ref) = max|x - ref| / max|ref|``, the max-norm relative error of the whole tensor. For
gradients the denominator is at least the size of one term of the gradient sum, ``max|x| / (T_base N)``: where the
terms cancel exactly (one positive that is also the only other contrast row: p = 1, dL/dz = w (p - 1) = 0) the
reference gradient is 0 while any float computation leaves rounding noise of that term's size. Where every anchor
lacks a positive the weights are exactly 0 and the kernel must return exact zeros (checked). Features are drawn
with rows of norm about 1 (``randn / sqrt(D)``, the scale of the L2-normalised embeddings CPSC-DFKD contrasts), so
that logits are O(1/T): with unit-variance entries at D = 128 and T = 0.1 the logits reach ~100 and the float32
*reference itself* is off by ~2e-5 from float64, which says nothing about the kernel.
"""

from __future__ import annotations

import math

import pytest
import torch

from dfkd_fast.ops.supcon import NO_SELF, supcon_bwd, supcon_fwd, supcon_loss, supcon_loss_pairs
from dfkd_fast.reference.supcon import supcon_loss_pairs_reference, supcon_loss_reference
from helpers import rel_err

FP32_TOL = 1e-5  # the bar for float32 inputs against the float64 reference
# 2-byte inputs against the float32 reference on the same (rounded) inputs. The loss is accumulated in fp32 and
# barely moves; the gradients are stored in the input dtype (the interpreter rounds that store toward zero, and on
# a GPU dL/dz is also rounded to the input dtype to feed the tensor cores): 2 ulps of relative error.
LOW_PRECISION_TOL = {torch.float16: (1e-5, 2 * 2.0**-10), torch.bfloat16: (1e-5, 2 * 2.0**-7)}


def term_size(x: torch.Tensor, n_anchors: int, base_temperature: float) -> float:
    """The size of one term of dL/dx: (T/T_base) (1/N) (1/T) max|x| (see the module docstring)."""
    return x.detach().abs().max().item() / (base_temperature * n_anchors)


def make_features(batch: int, views: int, dim: int, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(batch, views, dim, dtype=torch.float64) / math.sqrt(dim)).to(dtype)


def make_labels(kind: str, batch: int) -> torch.Tensor:
    if kind == "same":
        return torch.zeros(batch, dtype=torch.int64)
    if kind == "distinct":
        return torch.randperm(batch)
    if kind == "random":
        return torch.randint(0, max(1, batch // 4), (batch,))
    if kind == "singleton":  # a few large classes plus classes of one sample (no positive with V = 1)
        labels = torch.randint(0, 3, (batch,))
        labels[: max(1, batch // 3)] = 100 + torch.arange(max(1, batch // 3))
        return labels[torch.randperm(batch)]
    raise ValueError(kind)


def loss_and_grad(fn, *tensors):
    """The loss and the gradients of ``-1.7 * loss`` (an upstream gradient other than 1 checks its scaling)."""
    inputs = [t.detach().clone().requires_grad_() for t in tensors]
    loss = fn(*inputs)
    grads = torch.autograd.grad(loss, inputs, torch.tensor(-1.7, dtype=loss.dtype, device=loss.device),
                                allow_unused=True)
    return loss.detach(), [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, inputs)]


# (B, V, D, labels, contrast_mode, normalize): every N in {1, 2, 7, 64, 130, 257}, D in {3, 16, 128}, V in {1, 2},
# label kind, mode and normalisation appears several times, without the full cross product (the interpreter is slow).
CASES = [
    (1, 1, 3, "same", "all", False),  # a lone anchor: nothing to contrast
    (1, 2, 16, "same", "all", True),
    (1, 2, 128, "random", "one", False),
    (2, 1, 3, "distinct", "all", False),  # no anchor has a positive: loss and gradients exactly 0
    (2, 2, 128, "distinct", "one", True),
    (2, 1, 16, "same", "one", False),
    (7, 1, 16, "random", "all", True),
    (7, 2, 3, "singleton", "one", False),
    (7, 2, 128, "same", "all", False),
    (64, 1, 128, "singleton", "all", False),
    (64, 2, 3, "random", "one", True),
    (64, 2, 16, "distinct", "all", False),
    (130, 1, 3, "same", "one", False),
    (130, 2, 16, "singleton", "all", True),
    (130, 1, 128, "random", "all", True),
    (257, 1, 16, "random", "all", False),
    (257, 2, 3, "singleton", "all", True),
    (257, 2, 16, "singleton", "one", False),
    (257, 2, 128, "random", "all", True),
]


@pytest.mark.parametrize("batch,views,dim,label_kind,mode,normalize", CASES)
def test_supcon_loss_matches_float64_reference(batch, views, dim, label_kind, mode, normalize):
    features = make_features(batch, views, dim)
    labels = make_labels(label_kind, batch)
    kwargs = dict(temperature=0.1, base_temperature=0.07, contrast_mode=mode, normalize=normalize)
    loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f, labels, backend="fused", **kwargs), features)
    ref, (ref_grad,) = loss_and_grad(lambda f: supcon_loss_reference(f, labels, **kwargs), features.double())
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    n_anchors = batch * views if mode == "all" else batch
    assert rel_err(loss, ref) <= FP32_TOL, (loss.item(), ref.item())
    assert rel_err(grad, ref_grad, term_size(features, n_anchors, 0.07)) <= FP32_TOL
    if (label_kind == "distinct" or batch == 1) and views == 1:  # no anchor has a positive
        assert loss.item() == 0.0 and not grad.any()


def test_simclr_labels_none_and_non_contiguous_features():
    wide = make_features(33, 2, 32)
    features = wide[:, :, ::2]  # non-contiguous [B, V, 16]
    loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f[:, :, ::2], None, temperature=0.5, backend="fused"), wide)
    ref, (ref_grad,) = loss_and_grad(lambda f: supcon_loss_reference(f[:, :, ::2], None, temperature=0.5),
                                     wide.double())
    assert not features.is_contiguous()
    assert rel_err(loss, ref) <= FP32_TOL and rel_err(grad, ref_grad) <= FP32_TOL


# (N, M, D, self_offset, normalize): the general anchors-vs-contrast form (what DDP uses: local anchors against the
# all-gathered contrast set), with and without a self pair, and the extreme offsets.
PAIR_CASES = [
    (7, 64, 16, None, False),
    (64, 130, 3, None, True),
    (64, 130, 16, 3, False),
    (2, 257, 128, 255, True),  # self_offset = M - N
    (130, 130, 16, 0, True),
    (1, 1, 3, 0, False),  # only the self pair: nothing to contrast
]


@pytest.mark.parametrize("n,m,dim,self_offset,normalize", PAIR_CASES)
def test_supcon_loss_pairs_matches_float64_reference(n, m, dim, self_offset, normalize):
    anchors = make_features(n, 1, dim)[:, 0]
    contrast = make_features(m, 1, dim)[:, 0]
    anchor_labels, contrast_labels = torch.randint(0, 3, (n,)), torch.randint(0, 3, (m,))
    kwargs = dict(temperature=0.2, base_temperature=0.1, self_offset=self_offset, normalize=normalize)

    def fused(a, c):
        return supcon_loss_pairs(a, anchor_labels, c, contrast_labels, backend="fused", **kwargs)

    def reference(a, c):
        return supcon_loss_pairs_reference(a, anchor_labels, c, contrast_labels, 0.2, 0.1, self_offset, normalize)

    loss, grads = loss_and_grad(fused, anchors, contrast)
    ref, ref_grads = loss_and_grad(reference, anchors.double(), contrast.double())
    assert rel_err(loss, ref) <= FP32_TOL
    for grad, ref_grad in zip(grads, ref_grads):
        assert rel_err(grad, ref_grad) <= FP32_TOL


def test_pairs_with_anchors_viewing_the_contrast_set():
    """The DDP layout: the anchors are rows [offset, offset + N) of the contrast set, so both gradients meet."""
    contrast = make_features(96, 1, 16)[:, 0]
    labels = torch.randint(0, 5, (96,))
    offset, n = 32, 40

    def run(c, fn, **kw):
        return fn(c[offset:offset + n], labels[offset:offset + n], c, labels, temperature=0.1, self_offset=offset, **kw)

    loss, (grad,) = loss_and_grad(lambda c: run(c, supcon_loss_pairs, backend="fused"), contrast)
    ref, (ref_grad,) = loss_and_grad(lambda c: run(c, supcon_loss_pairs_reference), contrast.double())
    assert rel_err(loss, ref) <= FP32_TOL and rel_err(grad, ref_grad) <= FP32_TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,normalize", [(64, 16, False), (130, 128, True)])
def test_low_precision_inputs_match_float32_reference(dtype, batch, dim, normalize):
    features = make_features(batch, 2, dim, dtype)
    labels = make_labels("random", batch)
    kwargs = dict(temperature=0.1, normalize=normalize)
    loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f, labels, backend="fused", **kwargs), features)
    ref, (ref_grad,) = loss_and_grad(lambda f: supcon_loss_reference(f, labels, **kwargs), features.float())
    loss_tol, grad_tol = LOW_PRECISION_TOL[dtype]
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert rel_err(loss, ref) <= loss_tol
    assert rel_err(grad, ref_grad) <= grad_tol


def test_statistics_are_the_per_anchor_lse_and_positive_count():
    anchors, contrast = make_features(20, 1, 8)[:, 0], make_features(45, 1, 8)[:, 0]
    anchor_labels, contrast_labels = torch.randint(0, 4, (20,)), torch.randint(0, 4, (45,))
    loss, lse, num_pos = supcon_fwd(anchors, anchor_labels, contrast, contrast_labels, 1 / 0.3, 1.0, 5, False)
    logits = (anchors.double() @ contrast.double().T) / 0.3
    rows = torch.arange(20)
    not_self = torch.ones(20, 45, dtype=torch.bool)
    not_self[rows, rows + 5] = False
    positive = not_self & (anchor_labels[:, None] == contrast_labels[None, :])
    assert num_pos.dtype == torch.int32 and torch.equal(num_pos, positive.sum(1).int())
    assert rel_err(lse, torch.logsumexp(logits.masked_fill(~not_self, -math.inf), 1)) <= FP32_TOL


def test_gradcheck_float64():
    features = make_features(4, 2, 3, torch.float64).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2])
    for normalize in (False, True):
        assert torch.autograd.gradcheck(
            lambda f: supcon_loss(f, labels, temperature=0.5, normalize=normalize, backend="fused"), (features,)
        )
    anchors = make_features(3, 1, 5, torch.float64)[:, 0].requires_grad_()
    contrast = make_features(9, 1, 5, torch.float64)[:, 0].requires_grad_()
    anchor_labels, contrast_labels = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1, 1, 2, 0, 1, 0, 0])
    assert torch.autograd.gradcheck(
        lambda a, c: supcon_loss_pairs(a, anchor_labels, c, contrast_labels, temperature=0.3, self_offset=4,
                                       normalize=True, backend="fused"),
        (anchors, contrast),
        fast_mode=True,
    )


def test_opcheck():
    anchors = make_features(10, 1, 6)[:, 0].requires_grad_()
    contrast = make_features(23, 1, 6)[:, 0].requires_grad_()
    anchor_labels, contrast_labels = torch.randint(0, 3, (10,)), torch.randint(0, 3, (23,))
    for self_offset, normalize in ((NO_SELF, True), (4, False)):
        args = (anchors, anchor_labels, contrast, contrast_labels, 1 / 0.07, 1.0, self_offset, normalize)
        torch.library.opcheck(torch.ops.dfkd_fast.supcon_fwd.default, args)
    _, lse, num_pos = supcon_fwd(anchors.detach(), anchor_labels, contrast.detach(), contrast_labels,
                                 1 / 0.07, 1.0, 4, False)
    args = (torch.tensor(1.5), anchors.detach(), anchor_labels, contrast.detach(), contrast_labels, lse, num_pos,
            1 / 0.07, 1.0, 4, False)
    torch.library.opcheck(torch.ops.dfkd_fast.supcon_bwd.default, args)


def test_torch_compile_fullgraph_parity():
    features = make_features(19, 2, 8)
    labels = make_labels("random", 19)

    def step(f):
        return supcon_loss(f, labels, temperature=0.1, normalize=True, backend="fused")

    loss, (grad,) = loss_and_grad(step, features)
    compiled_loss, (compiled_grad,) = loss_and_grad(torch.compile(step, fullgraph=True), features)
    assert rel_err(compiled_loss, loss) <= FP32_TOL and rel_err(compiled_grad, grad) <= FP32_TOL


def test_saved_for_backward_is_linear_in_n():
    """At N = 4096 (B = 2048, V = 2) the tensors kept for backward are the inputs plus 8 bytes per anchor."""
    batch, views, dim = 2048, 2, 16
    n = batch * views
    features = make_features(batch, views, dim).requires_grad_()
    labels = make_labels("random", batch)
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = supcon_loss(features, labels, temperature=0.1, backend="fused")
    total = sum(t.numel() * t.element_size() for t in saved)
    # The op saves anchors and contrast (here one [N, D] fp32 tensor, saved twice), both label vectors ([N] int64),
    # the LSE ([N] fp32) and the positive counts ([N] int32).
    assert total == 2 * n * dim * 4 + 2 * n * 8 + n * 4 + n * 4, [tuple(t.shape) for t in saved]
    assert max(t.numel() for t in saved) == n * dim
    assert total < n * n * 4 / 50  # one N x N fp32 matrix would be 64 MiB: this is 0.6 MiB
    assert loss.grad_fn is not None  # (the backward from exactly these tensors is what the other tests check)


try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a dev extra
    given = None


if given is not None:

    @given(
        batch=st.integers(1, 40),
        views=st.integers(1, 2),
        dim=st.integers(1, 40),
        num_classes=st.integers(1, 8),
        mode=st.sampled_from(["all", "one"]),
        normalize=st.booleans(),
        temperature=st.floats(0.05, 1.0),
        seed=st.integers(0, 2**16),
    )
    def test_hypothesis_random_shapes_and_labels(batch, views, dim, num_classes, mode, normalize, temperature, seed):
        gen = torch.Generator().manual_seed(seed)
        # Unit rows keep the logits within 1/T whatever D (the conditioning note in the module docstring).
        features = torch.nn.functional.normalize(torch.randn(batch, views, dim, generator=gen), dim=-1)
        features = features * torch.empty(batch, views, 1).uniform_(0.5, 2.0, generator=gen)
        labels = torch.randint(0, num_classes, (batch,), generator=gen)
        kwargs = dict(temperature=temperature, contrast_mode=mode, normalize=normalize)
        loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f, labels, backend="fused", **kwargs), features)
        ref, (ref_grad,) = loss_and_grad(lambda f: supcon_loss_reference(f, labels, **kwargs), features.double())
        tol = FP32_TOL if normalize else 4 * FP32_TOL  # unnormalised rows up to norm 2: logits up to 4/T
        assert rel_err(loss, ref) <= tol and rel_err(grad, ref_grad) <= tol


# ----------------------------------------------------------------------------------------------------------------
# GPU-only: large N, 2-byte inputs on the tensor cores, TF32, determinism, memory.


def _cuda_case(batch, dim, dtype, views=2, classes=100):
    features = make_features(batch, views, dim, dtype).cuda()
    labels = torch.randint(0, classes, (batch,)).cuda()
    return features, labels


@pytest.mark.cuda
@pytest.mark.parametrize("dim", [128, 512])
def test_cuda_large_n_float32_matches_float64(dim):
    features, labels = _cuda_case(4096, dim, torch.float32)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # TF32 off
    try:
        loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f, labels, temperature=0.07, backend="fused"), features)
    finally:
        torch.set_float32_matmul_precision(previous)
    ref, (ref_grad,) = loss_and_grad(lambda f: supcon_loss_reference(f, labels, temperature=0.07), features.double())
    assert rel_err(loss, ref) <= FP32_TOL and rel_err(grad, ref_grad) <= FP32_TOL


@pytest.mark.cuda
def test_cuda_tf32_on_stays_close():
    features, labels = _cuda_case(4096, 128, torch.float32)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on: the kernel follows torch's setting
    try:
        loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f, labels, temperature=0.07, backend="fused"), features)
    finally:
        torch.set_float32_matmul_precision(previous)
    ref, (ref_grad,) = loss_and_grad(lambda f: supcon_loss_reference(f, labels, temperature=0.07), features.double())
    # TF32 keeps 10 mantissa bits of the operands (2^-11 relative rounding).
    assert rel_err(loss, ref) <= 2e-3 and rel_err(grad, ref_grad) <= 2e-2


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim,normalize", [(128, False), (128, True), (512, False)])
def test_cuda_low_precision_large_n(dtype, dim, normalize):
    features, labels = _cuda_case(8192, dim, dtype)
    kwargs = dict(temperature=0.07, normalize=normalize)
    loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f, labels, backend="fused", **kwargs), features)
    ref, (ref_grad,) = loss_and_grad(lambda f: supcon_loss_reference(f, labels, **kwargs), features.double())
    # flash-attention's criterion: no more than twice the error of PyTorch on the same 2-byte inputs, whose
    # reference computes in fp32 and rounds its result to the input dtype once.
    torch_grad = loss_and_grad(lambda f: supcon_loss_reference(f, labels, **kwargs), features)[1][0]
    assert rel_err(loss, ref) <= 1e-4
    assert rel_err(grad, ref_grad) <= 2 * rel_err(torch_grad, ref_grad) + 2e-3


@pytest.mark.cuda
def test_cuda_repeat_determinism():
    features, labels = _cuda_case(8192, 128, torch.bfloat16)
    runs = [loss_and_grad(lambda f: supcon_loss(f, labels, backend="fused"), features) for _ in range(3)]
    for loss, (grad,) in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1][0])


@pytest.mark.cuda
def test_cuda_n65536_extra_memory_under_1gb():
    features, labels = _cuda_case(32768, 128, torch.bfloat16, classes=1000)
    features.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    supcon_loss(features, labels, backend="fused").backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 2**30
    assert torch.isfinite(features.grad).all()


@pytest.mark.cuda
def test_cuda_supcon_bwd_matches_reference_dtype_and_device():
    features, labels = _cuda_case(300, 64, torch.bfloat16)
    loss, (grad,) = loss_and_grad(lambda f: supcon_loss(f, labels, backend="auto"), features)  # auto = fused on CUDA
    assert grad.device.type == "cuda" and grad.dtype == torch.bfloat16 and loss.dtype == torch.float32
    args = (torch.tensor(1.0, device="cuda"), features[:, 0], labels, features[:, 0], labels)
    _, lse, num_pos = supcon_fwd(features[:, 0], labels, features[:, 0], labels, 1 / 0.07, 1.0, 0, False)
    d_anchors, d_contrast = supcon_bwd(*args, lse, num_pos, 1 / 0.07, 1.0, 0, False)
    assert d_anchors.dtype == torch.bfloat16 and d_contrast.shape == (300, 64)
