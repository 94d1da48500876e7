"""Autograd completeness of the Triton-backed ops, on the reference and the fused backend alike (the fused one under
the Triton interpreter on CPU): double backward, torch.func.grad / jacrev / vmap, torch.compile(dynamic=True).
The README's "Autograd and compile support" table states what these tests check."""

import pytest
import torch

import dfkd_fast

BACKENDS = ["reference", "fused"]


def _cbn(training, stats):
    labels = torch.tensor([0, 2, 1, 0])
    rm, rv = (torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5) if stats else (None, None)

    def f(x, weight, bias, backend):
        return dfkd_fast.class_conditional_batch_norm(x, labels, weight, bias, rm, rv, training=training,
                                                      backend=backend)

    return f, (torch.randn(4, 3, 2, 5, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64) + 1,
               torch.randn(3, 3, dtype=torch.float64))


def _supcon():
    labels = torch.tensor([0, 1, 0])

    def f(features, backend):
        return dfkd_fast.supcon_loss(features, labels, temperature=0.5, base_temperature=0.7, normalize=True,
                                     backend=backend)

    return f, (torch.randn(3, 2, 4, dtype=torch.float64),)


def _supcon_pairs():
    anchor_labels, contrast_labels = torch.tensor([0, 1]), torch.tensor([1, 0, 0])

    def f(anchors, contrast, backend):
        return dfkd_fast.supcon_loss_pairs(anchors, anchor_labels, contrast, contrast_labels, temperature=0.3,
                                           self_offset=None, backend=backend)

    return f, (torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))


def _bn_stats():
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def f(x, backend):
        return dfkd_fast.bn_stats_loss(x, rm, rv, backend=backend)

    return f, (torch.randn(3, 3, 2, 5, dtype=torch.float64),)


CASES = {
    "supcon": _supcon,
    "supcon_pairs": _supcon_pairs,
    "cbn_train": lambda: _cbn(True, False),
    "cbn_train_running": lambda: _cbn(True, True),
    "cbn_eval": lambda: _cbn(False, True),
    "bn_stats": _bn_stats,
}


def scalar(f, backend):
    """The op as a scalar function of its differentiable inputs (a fixed random projection of a tensor output)."""

    def g(*inputs):
        out = f(*inputs, backend=backend)
        if out.dim() == 0:
            return out
        return (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum()

    return g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_double_backward(case, backend):
    """gradgradcheck in float64, and the fused backend's Hessian-vector product equals the reference's."""
    f, inputs = CASES[case]()
    inputs = tuple(t.requires_grad_() for t in inputs)
    # fast_mode: random projections of the Jacobians (the interpreter is slow); the exact comparison is below
    assert torch.autograd.gradgradcheck(lambda *xs: f(*xs, backend=backend), inputs, fast_mode=True)

    def hvp(be):
        grads = torch.autograd.grad(scalar(f, be)(*inputs), inputs, create_graph=True)
        grads = [g for g in grads if g.requires_grad]  # (the gradient of a bias is constant)
        vs = [torch.linspace(-1, 1, g.numel(), dtype=g.dtype).view_as(g) for g in grads]
        return torch.autograd.grad(grads, inputs, vs, allow_unused=True, materialize_grads=True)

    for got, expected in zip(hvp(backend), hvp("reference")):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


def test_third_order_and_torch_func_hessian_match_the_reference():
    f, (x,) = _bn_stats()

    def third(backend):
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(f(xx, backend), xx, create_graph=True)
        (gg,) = torch.autograd.grad((g * g.detach()).sum(), xx, create_graph=True)
        return torch.autograd.grad((gg**2).sum(), xx)[0]

    torch.testing.assert_close(third("fused"), third("reference"), rtol=1e-9, atol=1e-11)
    hessian = {be: torch.func.jacrev(torch.func.jacrev(lambda t: f(t, be)))(x) for be in BACKENDS}
    torch.testing.assert_close(hessian["fused"], hessian["reference"], rtol=1e-9, atol=1e-11)
    with pytest.raises(NotImplementedError, match="dfkd_fast::bn_stats_fwd: forward-mode AD"):
        torch.func.hessian(lambda t: f(t, "fused"))(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_torch_func_grad_and_jacrev(case, backend):
    f, inputs = CASES[case]()
    g = scalar(f, backend)
    argnums = tuple(range(len(inputs)))
    leaves = [t.clone().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(g(*leaves), leaves)
    for transform in (torch.func.grad, torch.func.jacrev):
        got = transform(g, argnums=argnums)(*inputs)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if c != "cbn_train_running"])  # jacfwd vmaps the forward
def test_forward_mode_reference_works_fused_is_a_clear_error(case):
    f, inputs = CASES[case]()
    leaves = [t.clone().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(scalar(f, "reference")(*leaves), leaves)
    got = torch.func.jacfwd(scalar(f, "reference"), argnums=tuple(range(len(inputs))))(*inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(NotImplementedError, match=r"dfkd_fast::\w+_fwd: forward-mode AD .* is not implemented"):
        torch.func.jacfwd(scalar(f, "fused"))(*inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [c for c in CASES if c != "cbn_train_running"])
def test_vmap_equals_a_loop(case, backend):
    f, inputs = CASES[case]()
    batched = [torch.stack([t, t.flip(0) * 0.5]) for t in inputs]  # two different samples of every input
    got = torch.func.vmap(lambda *xs: f(*xs, backend=backend))(*batched)
    expected = torch.stack([f(*(b[i] for b in batched), backend=backend) for i in range(2)])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # and the gradient of a vmapped loss (the backward runs under vmap too)
    grads = torch.func.vmap(torch.func.grad(scalar(f, backend)))(*batched)
    loop = torch.stack([torch.func.grad(scalar(f, "reference"))(*(b[i] for b in batched)) for i in range(2)])
    torch.testing.assert_close(grads, loop, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_of_a_running_statistics_update_is_a_clear_error(backend):
    f, inputs = _cbn(True, True)
    with pytest.raises(RuntimeError, match="class_conditional_batch_norm: cannot update 'running_mean'"):
        torch.func.vmap(lambda *xs: f(*xs, backend=backend))(*(torch.stack([t, t]) for t in inputs))


def _compile_cases(backend):
    """(op as a function of a tensor and a float hyper-parameter, the tensor, two values of the float)."""
    labels, rm, rv = torch.tensor([0, 2, 1, 0]), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    weight, bias = torch.randn(3, 3, dtype=torch.float64) + 1, torch.randn(3, 3, dtype=torch.float64)
    return {
        "supcon": (lambda x, t: dfkd_fast.supcon_loss(x, labels, temperature=t, normalize=True, backend=backend),
                   torch.randn(4, 2, 5, dtype=torch.float64), (0.5, 0.25)),
        "cbn_train_running": (lambda x, eps: dfkd_fast.class_conditional_batch_norm(
            x, labels, weight, bias, rm, rv, eps=eps, momentum=eps, backend=backend),
            torch.randn(4, 3, 2, 5, dtype=torch.float64), (1e-3, 1e-2)),
        "bn_stats": (lambda x, scale: dfkd_fast.bn_stats_loss(x * scale, rm, rv, backend=backend),
                     torch.randn(4, 3, 2, 5, dtype=torch.float64), (1.0, 2.0)),
    }


@pytest.mark.parametrize("case,backend", [("supcon", "fused"), ("cbn_train_running", "fused"), ("bn_stats", "fused"),
                                          ("cbn_train_running", "reference")])
def test_compile_fullgraph_dynamic(case, backend):
    """dynamic=True: float arguments are SymFloats in the validation, the fused op is traced into one graph that
    serves another input size, with the eager values and gradients. (A new float value recompiles: the custom ops
    take their floats as constants.)"""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    f, first, floats = _compile_cases(backend)[case]
    g = lambda x, v: (f(x, v) ** 3).sum()  # noqa: E731  (a linspace projection would specialise the size)
    # (Inductor's code generation for the reference formula takes a minute on CI's cores: Dynamo and AOTAutograd
    # are what the reference's validation and its running-statistics custom op meet)
    counter = CompileCounterWithBackend("inductor" if backend == "fused" else "aot_eager")
    compiled = torch.compile(g, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for extra, value in ((0, floats[0]), (3, floats[0]), (3, floats[1])):  # another size of the last dimension
        x = torch.randn(*first.shape[:-1], first.shape[-1] + extra, dtype=first.dtype)
        eager, lazy = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected, got = g(eager, value), compiled(lazy, value)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(got, lazy)[0], torch.autograd.grad(expected, eager)[0],
                                   rtol=1e-10, atol=1e-12)
        frames.append(counter.frame_count)
    assert frames[1] == frames[0], f"recompiled for a new input size: {frames}"


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_concrete_under_torch_func(backend, hard):
    """torch.func.grad / jacrev of the Binary Concrete op equal autograd's gradient on both backends (the C++ op goes
    through a setup_context-style Function); forward mode on the fused backend is an error naming the op."""
    pytest.importorskip("dfkd_fast._C")
    logits = torch.randn(3, 7, 7, dtype=torch.float64)
    num_nodes = torch.tensor([7, 4, 6])
    weights = torch.randn(3, 7, 7, dtype=torch.float64)

    def g(x):
        adj = dfkd_fast.binary_concrete_adjacency(x, num_nodes, tau=0.5, seed=3, offset=11, hard=hard, ratio=0.3,
                                                  backend=backend)
        return (adj * weights).sum()

    leaf = logits.clone().requires_grad_()
    (expected,) = torch.autograd.grad(g(leaf), leaf)
    assert expected.abs().sum() > 0
    for transform in (torch.func.grad, torch.func.jacrev):
        torch.testing.assert_close(transform(g)(logits), expected, rtol=1e-12, atol=1e-12)
    if backend == "fused":
        with pytest.raises(NotImplementedError, match=r"dfkd_fast::binary_concrete_fwd: forward-mode AD"):
            torch.func.jvp(g, (logits,), (torch.ones_like(logits),))
