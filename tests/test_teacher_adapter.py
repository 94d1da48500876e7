"""Any nn.Module classifier as a CPSC-DFKD teacher or student (issue 14, item 8): the adapter brings it into the
``forward(x, out_feature)`` convention, and a model that does not fit is one line saying what is expected."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd_fast.cpsc import CPSCConfig, CPSCTrainer
from dfkd_fast.errors import DfkdError
from dfkd_fast.models import ClassifierAdapter, as_classifier, feature_dim, head_of, num_classes_of


class PlainNet(nn.Module):
    """A user's classifier: no out_feature argument, its head named `out`."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        return self.out(self.pool(self.body(x)).flatten(1))


def test_default_feature_is_the_normalised_head_input():
    net = PlainNet()
    model = as_classifier(net, in_channels=1, image_size=8)
    assert isinstance(model, ClassifierAdapter) and head_of(model) is net.out
    assert num_classes_of(model) == 10 and feature_dim(model) == 8
    x = torch.randn(3, 1, 8, 8)
    feature, logits = model(x, out_feature=True)
    torch.testing.assert_close(logits, net(x))
    torch.testing.assert_close(feature, F.normalize(net.pool(net.body(x)).flatten(1), dim=1))
    torch.testing.assert_close(model(x), net(x))


def test_named_feature_layer_is_pooled_and_its_width_probed():
    net = PlainNet(width=6)
    model = as_classifier(net, in_channels=1, image_size=8, feature_layer="body")
    assert feature_dim(model) == 6
    x = torch.randn(2, 1, 8, 8)
    feature, _ = model(x, out_feature=True)
    torch.testing.assert_close(feature, F.normalize(net.body(x).mean((2, 3)), dim=1))


def test_zoo_models_are_used_unchanged():
    from dfkd_fast.models import build_model

    zoo = build_model("small_cnn", 10, in_channels=1)
    assert as_classifier(zoo, in_channels=1, image_size=8) is zoo


def test_cpsc_trains_with_a_users_teacher_and_student():
    torch.manual_seed(0)
    cfg = CPSCConfig(dataset="digits", batch_size=8, nz=8, ngf=4, epochs=1, epoch_itrs=1, G_steps=1, S_steps=1,
                     warmup_epochs=1, sample_every=0)
    trainer = CPSCTrainer.from_config(cfg, PlainNet(width=8).eval(), in_channels=1, image_size=8,
                                      student=PlainNet(width=4), norm=((0.5,), (0.5,)), log=lambda *a: None)
    before = trainer.student_core.model.out.weight.detach().clone()
    assert trainer.fit()["epochs"] == 1
    assert not torch.equal(before, trainer.student_core.model.out.weight)  # the user's student learnt


class NoHead(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


class WrongChannels(PlainNet):
    def forward(self, x):
        return super().forward(x[:, :0])


class TwoOutputs(PlainNet):
    def forward(self, x):
        return super().forward(x), x


@pytest.mark.parametrize("model,kwargs,match", [
    (NoHead(), {}, "has no nn.Linear layer: a CPSC-DFKD teacher/student must be a classifier"),
    (PlainNet(), {"head": "fc"}, r"has no nn.Linear named 'fc' \(its nn.Linear layers: out\)"),
    (PlainNet(), {"feature_layer": "avgpool"}, "has no submodule named 'avgpool'"),
    (WrongChannels(), {}, "does not fit: RuntimeError"),
    (TwoOutputs(), {}, "does not fit"),
])
def test_a_model_that_does_not_fit_is_one_line_saying_what_is_expected(model, kwargs, match):
    with pytest.raises(DfkdError, match=match) as info:
        as_classifier(model, in_channels=1, image_size=8, what="teacher", **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith("teacher")
    if "does not fit" in match:
        assert "expected model(x) -> logits [B, num_classes]" in message
