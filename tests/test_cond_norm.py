"""class_conditional_batch_norm: the reference against nn.BatchNorm2d + an embedding affine, backend agreement, bad
inputs. (The fused kernel, the custom ops, compile and the CPSC module's state_dict: test_cond_norm_fused.py.)"""

import pytest
import torch
from torch import nn

import dfkd_fast
from dfkd_fast.reference import class_conditional_batch_norm_reference


def bn_plus_embedding(x, labels, weight, bias, bn):
    return weight[labels][:, :, None, None] * bn(x) + bias[labels][:, :, None, None]


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 2, 3, 1), (6, 5, 1, 1), (3, 4, 2, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reference_matches_batchnorm_plus_embedding(shape, channels_last):
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 4, (shape[0],))
    weight, bias = torch.randn(4, shape[1], dtype=torch.float64), torch.randn(4, shape[1], dtype=torch.float64)
    bn = nn.BatchNorm2d(shape[1], eps=1e-3, momentum=0.3, affine=False).double()
    rm, rv = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    for training in (True, True, False):
        bn.train(training)
        expected = bn_plus_embedding(x, labels, weight, bias, bn)
        got = class_conditional_batch_norm_reference(x, labels, weight, bias, rm, rv, training, 0.3, 1e-3)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rm, bn.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rv, bn.running_var, rtol=1e-12, atol=1e-12)


def test_reference_gradcheck():
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([3, 0, 3])
    assert torch.autograd.gradcheck(
        lambda *a: class_conditional_batch_norm_reference(*a[:1], labels, *a[1:]), (x, weight, bias)
    )


@pytest.mark.parametrize("training", [True, False])
def test_backends_agree(training):
    x = torch.randn(5, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 1, 3, 0, 1])  # class 2 absent
    results = []
    for backend in ("reference", "fused"):
        rm, rv = torch.full((3,), 0.5, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
        y = dfkd_fast.class_conditional_batch_norm(x, labels, weight, bias, rm, rv, training=training, backend=backend)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), (x, weight, bias))
        results.append((y, rm, rv, *grads))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


X = torch.randn(2, 3, 4, 4)
LAB = torch.tensor([0, 2])
W, B = torch.ones(3, 3), torch.zeros(3, 3)
BAD_INPUTS = [
    (lambda: dfkd_fast.class_conditional_batch_norm(X[0, 0, 0], LAB, W, B), ValueError, "'x' must have 2 or 3 or 4"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X.int(), LAB, W, B), TypeError, "'x' must have dtype"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, torch.tensor([0, 3]), W, B), ValueError, "found 3"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, torch.tensor([-1, 0]), W, B), ValueError, "found -1"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB.float(), W, B), TypeError, "'labels' must have dtype"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB[:1], W, B), ValueError, "'labels' must have length 2"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W[:, :2], B), ValueError, "must have C = 2 channels"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B[:2]), ValueError, "'bias' must have shape"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, torch.zeros(3)), ValueError, "given together"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, torch.zeros(2), torch.ones(2)), ValueError,
     "'running_mean' must have shape"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, eps=0.0), ValueError, "'eps'"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, momentum=1.5), ValueError, "'momentum'"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W.to("meta"), B.to("meta")), ValueError,
     "'weight' is on meta"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, torch.zeros(1).expand(3), torch.ones(3)),
     ValueError, "'running_mean' is updated in place but is an expanded (stride-0) view"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, torch.zeros(3), torch.ones(1).expand(3)),
     ValueError, "'running_var' is updated in place"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X.clone().index_fill_(2, torch.tensor([1]), float("nan")), LAB,
                                                    W, B), ValueError, "'x' contains NaN or infinite values"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W.clone().fill_(float("inf")), B), ValueError,
     "'weight' contains NaN"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B.clone().fill_(float("nan"))), ValueError,
     "'bias' contains NaN"),
    (lambda: dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, torch.zeros(3), torch.full((3,), float("inf")),
                                                    training=False), ValueError, "'running_var' contains NaN"),
]


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_eval_empty_batch_on_every_backend(backend):
    """N = 0 in eval mode works as in nn.BatchNorm2d (the reference used to fail on view(0, -1, ...))."""
    x = torch.randn(0, 3, 2, 2, requires_grad=True)
    weight = torch.randn(2, 3, requires_grad=True)
    y = dfkd_fast.class_conditional_batch_norm(x, torch.zeros(0, dtype=torch.long), weight, torch.zeros(2, 3),
                                               torch.zeros(3), torch.ones(3), training=False, backend=backend)
    assert y.shape == x.shape == nn.BatchNorm2d(3).eval()(x).shape
    dx, dweight = torch.autograd.grad(y.sum(), (x, weight))
    assert dx.shape == x.shape and torch.equal(dweight, torch.zeros_like(weight))


def test_expanded_running_stats_are_fine_when_only_read():
    y = dfkd_fast.class_conditional_batch_norm(X, LAB, W, B, torch.zeros(1).expand(3), torch.ones(1).expand(3),
                                               training=False)
    torch.testing.assert_close(y, X / (1 + 1e-3) ** 0.5)


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_reference_running_update_is_a_valid_custom_op():
    """The reference's in-place update is a custom op (so that torch.func sees an opaque side effect): opcheck it."""
    from dfkd_fast.reference.cond_norm import update_running_stats

    mean, var = torch.randn(3), torch.rand(3)
    torch.library.opcheck(update_running_stats, (torch.zeros(3), torch.ones(3), mean, var, 8, 0.1))
    rm = torch.zeros(3)
    update_running_stats(rm, None, mean, var, 8, 0.5)
    torch.testing.assert_close(rm, 0.5 * mean)
