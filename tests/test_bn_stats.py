"""bn_stats_loss and BNStatsLoss: the reference against DeepInversion's hook formula, the hooks over a model, the
custom ops, compile, bad inputs."""

import copy
import threading

import pytest
import torch
from torch import nn

import dfkd_fast
from dfkd_fast.nn import BNStatsLoss
from dfkd_fast.reference import bn_stats_loss_reference


def deepinversion_term(x, running_mean, running_var):
    """The upstream hook: mean over (N, H, W), variance of a permuted contiguous copy, plain L2 norms."""
    channels = x.shape[1]
    mean = x.mean([0, 2, 3])
    var = x.permute(1, 0, 2, 3).contiguous().view(channels, -1).var(1, unbiased=False)
    return torch.norm(running_var - var, 2) + torch.norm(running_mean - mean, 2)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 2, 1, 3), (7, 1, 2, 2)])
def test_reference_matches_deepinversion(shape):
    x = torch.randn(*shape, dtype=torch.float64) * 2 + 1
    rm, rv = torch.randn(shape[1], dtype=torch.float64), torch.rand(shape[1], dtype=torch.float64) + 0.5
    torch.testing.assert_close(bn_stats_loss_reference(x, rm, rv), deepinversion_term(x, rm, rv), rtol=1e-12, atol=0)


def test_reference_on_batchnorm1d_input():
    x, rm, rv = torch.randn(9, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), torch.ones(4)
    expected = torch.norm(x.mean(0) - rm) + torch.norm(x.var(0, unbiased=False) - rv.double())
    torch.testing.assert_close(bn_stats_loss_reference(x, rm, rv.double()), expected)


def test_reference_gradcheck():
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 2
    assert torch.autograd.gradcheck(lambda t: bn_stats_loss_reference(t, rm, rv), (x,))


@pytest.mark.parametrize("shape", [(5, 3, 4, 3), (6, 4)])
def test_backends_agree(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.randn(shape[1], dtype=torch.float64), torch.rand(shape[1], dtype=torch.float64) + 0.5
    results = []
    for backend in ("reference", "fused"):
        loss = dfkd_fast.bn_stats_loss(x, rm, rv, backend=backend)
        results.append((loss, *torch.autograd.grad(loss, x)))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
                                  nn.BatchNorm2d(5), nn.Flatten(), nn.LazyLinear(6), nn.BatchNorm1d(6))

    def forward(self, x):
        return self.body(x)


def test_hooks_sum_every_batchnorm_input():
    net = Net()
    net(torch.randn(2, 3, 7, 7))  # materialise the lazy layer
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    net.eval()
    inputs = []
    handles = [m.register_forward_hook(lambda mod, i, o: inputs.append((mod, i[0])))
               for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bn_loss = BNStatsLoss(net)
    assert bn_loss.num_layers == 3
    net(torch.randn(4, 3, 7, 7))
    expected = sum(bn_stats_loss_reference(x, m.running_mean, m.running_var) for m, x in inputs)
    torch.testing.assert_close(bn_loss(), expected)
    with pytest.raises(RuntimeError, match="no BatchNorm statistics collected"):
        bn_loss()  # the terms were consumed
    with bn_loss.paused():
        net(torch.randn(4, 3, 7, 7))
    with pytest.raises(RuntimeError):
        bn_loss()
    bn_loss.remove()
    for h in handles:
        h.remove()
    net(torch.randn(4, 3, 7, 7))
    assert bn_loss._terms == []


def test_hooks_reject_model_without_batchnorm():
    with pytest.raises(ValueError, match="has no BatchNorm layer"):
        BNStatsLoss(nn.Linear(3, 3))


X = torch.randn(2, 3, 4, 4)
RM, RV = torch.zeros(3), torch.ones(3)
BAD_INPUTS = [
    (lambda: dfkd_fast.bn_stats_loss(X[0, 0, 0], RM, RV), ValueError, "'x' must have 2 or 3 or 4 or 5 dimensions"),
    (lambda: dfkd_fast.bn_stats_loss(X.long(), RM, RV), TypeError, "'x' must have dtype"),
    (lambda: dfkd_fast.bn_stats_loss(X[:0], RM, RV), ValueError, "'x' must be non-empty"),
    (lambda: dfkd_fast.bn_stats_loss(X[:0], RM, RV, backend="fused"), ValueError, "'x' must be non-empty"),
    (lambda: dfkd_fast.bn_stats_loss(X, RM[:2], RV), ValueError, "'running_mean' must have shape \\(3,\\)"),
    (lambda: dfkd_fast.bn_stats_loss(X, RM, RV.view(3, 1)), ValueError, "'running_var' must have 1 dimensions"),
    (lambda: dfkd_fast.bn_stats_loss(X, RM.int(), RV), TypeError, "'running_mean' must have dtype"),
    (lambda: dfkd_fast.bn_stats_loss(X, RM.to("meta"), RV), ValueError, "'running_mean' is on meta"),
    (lambda: dfkd_fast.bn_stats_loss(torch.full_like(X, float("nan")), RM, RV), ValueError, "NaN or infinite"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_hooks_keep_each_threads_terms_apart():
    """Two threads forwarding one model: each gets the sum of its own forwards, not a mix of both."""
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    bn_loss = BNStatsLoss(net, backend="reference")
    batches = [torch.randn(2, 3, 3, 3) * (i + 1) for i in range(2)]
    expected = []
    for batch in batches:
        net(batch)
        expected.append(bn_loss())
    barrier = threading.Barrier(2, timeout=30)
    got = [None, None]

    def worker(i):
        net(batches[i])
        barrier.wait()  # both threads have collected their terms before either reads them
        if i == 1:
            with bn_loss.paused():  # pausing is per thread too
                barrier.wait()
                net(batches[i])
        else:
            barrier.wait()
            net(batches[i])  # collected: only thread 1 is paused
            net(batches[i])
        got[i] = bn_loss()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(got[0], 3 * expected[0])
    torch.testing.assert_close(got[1], expected[1])
    net(batches[0])
    copy.deepcopy(net)  # the hooks hold the loss module, whose per-thread state is not copied
    torch.testing.assert_close(bn_loss(), expected[0])
