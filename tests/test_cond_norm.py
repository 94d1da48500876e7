"""class_conditional_batch_norm: the reference against nn.BatchNorm2d + an embedding affine, the module against CPSC's
CategoricalConditionalBatchNorm2d, the custom ops, compile, bad inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dfkd_fast
from dfkd_fast.nn import ClassConditionalBatchNorm2d
from dfkd_fast.ops import cond_norm as cond_norm_ops
from dfkd_fast.reference import class_conditional_batch_norm_reference


class CategoricalConditionalBatchNorm2d(nn.BatchNorm2d):
    """CPSC-DFKD's module (network/conditional_batchnorm.py), re-typed from its description in the notes."""

    def __init__(self, num_classes, num_features, eps=1e-3, momentum=0.1):
        super().__init__(num_features, eps, momentum, affine=False, track_running_stats=True)
        self.weights = nn.Embedding(num_classes, num_features)
        self.biases = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.weights.weight)
        nn.init.zeros_(self.biases.weight)

    def forward(self, x, c):
        factor = 0.0
        if self.training:
            self.num_batches_tracked += 1
            factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        out = F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, factor, self.eps)
        return self.weights(c)[:, :, None, None] * out + self.biases(c)[:, :, None, None]


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


def test_fused_gradcheck():
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0, 2])
    assert torch.autograd.gradcheck(
        lambda *a: dfkd_fast.class_conditional_batch_norm(a[0], labels, *a[1:], backend="fused"), (x, weight, bias)
    )


@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_loads_cpsc_state_dict_and_matches(momentum):
    upstream = CategoricalConditionalBatchNorm2d(5, 3, momentum=momentum)
    with torch.no_grad():
        upstream.weights.weight.normal_()
        upstream.biases.weight.normal_()
    x, labels = torch.randn(6, 3, 4, 4), torch.randint(0, 5, (6,))
    for _ in range(2):
        upstream(x, labels)  # move the running statistics away from their init
    ours = ClassConditionalBatchNorm2d(5, 3, momentum=momentum)
    assert set(ours.state_dict()) == set(upstream.state_dict())
    ours.load_state_dict(upstream.state_dict())
    for training in (True, False):
        upstream.train(training)
        ours.train(training)
        torch.testing.assert_close(ours(x, labels), upstream(x, labels))
    for key, value in upstream.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)


def test_eval_mode_single_sample():
    module = ClassConditionalBatchNorm2d(3, 2).eval()
    assert module(torch.randn(1, 2, 1, 1), torch.tensor([1])).shape == (1, 2, 1, 1)


def test_train_mode_single_value_per_channel_raises_like_batchnorm():
    with pytest.raises(ValueError, match="expected more than 1 value per channel when training"):
        ClassConditionalBatchNorm2d(3, 2)(torch.randn(1, 2, 1, 1), torch.tensor([1]))


@pytest.mark.parametrize("use_batch_stats", [True, False])
def test_opcheck(use_batch_stats):
    x = torch.randn(3, 2, 3, 3, requires_grad=True)
    weight, bias = torch.randn(4, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([3, 0, 3])
    rm, rv = torch.zeros(2), torch.ones(2)
    torch.library.opcheck(cond_norm_ops.cond_norm_fwd, (x, labels, weight, bias, rm, rv, use_batch_stats, 1e-3))
    _, mean, var = cond_norm_ops.cond_norm_fwd(x, labels, weight, bias, rm, rv, use_batch_stats, 1e-3)
    torch.library.opcheck(cond_norm_ops.cond_norm_bwd,
                          (torch.randn(3, 2, 3, 3), x.detach(), labels, weight.detach(), mean, var, use_batch_stats,
                           1e-3))


def test_compile_fullgraph_matches_eager():
    module = ClassConditionalBatchNorm2d(4, 3)
    x, labels = torch.randn(4, 3, 5, 5, requires_grad=True), torch.tensor([0, 3, 3, 1])
    eager_stats = module.running_mean.clone()
    compiled = torch.compile(lambda t: class_conditional(t, labels, module), fullgraph=True)
    got = compiled(x)
    got_stats = module.running_mean.clone()
    module.running_mean.copy_(eager_stats)
    expected = class_conditional(x, labels, module)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_stats, module.running_mean)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(expected.sum(), x)[0])


def class_conditional(x, labels, module):
    return dfkd_fast.class_conditional_batch_norm(x, labels, module.weights.weight, module.biases.weight,
                                                  module.running_mean, module.running_var, momentum=0.2)


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
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
