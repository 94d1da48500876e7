"""The image model zoo: architectures as specified (parameter counts, BN layers, output convention), checkpoint
layouts that load unchanged (CMI, DataParallel, akamaster), and one-line errors for bad names and checkpoints."""

import glob
import os

import pytest
import torch
import torch.nn.functional as F

from dfkd_fast.data.images import dataset_info, load_images
from dfkd_fast.errors import DfkdError
from dfkd_fast.models import (MODELS, ConditionalGenerator, FeatureAdapter, build_model, feature_dim, head_of,
                              load_weights, model_spec)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def n_bn(model):
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name, millions, bn_layers, feat", [
    ("resnet34", 21.33, 36, 512), ("resnet18", 11.22, 20, 512), ("wrn_40_2", 2.26, 37, 128),
    ("wrn_40_1", 0.57, 37, 64), ("wrn_16_2", 0.70, 13, 128), ("wrn_16_1", 0.18, 13, 64), ("vgg11", 9.28, 8, 512),
])
def test_cpsc_zoo_matches_the_notes_at_100_classes(name, millions, bn_layers, feat):
    model = build_model(name, 100)
    assert round(n_params(model) / 1e6, 2) == millions
    assert n_bn(model) == bn_layers
    assert feature_dim(model) == feat


def test_he_resnets_have_published_sizes():
    # He et al. 2016 / akamaster: 0.27 M, 0.46 M, 0.66 M, 0.85 M parameters at 10 classes
    sizes = [n_params(build_model(name, 10)) for name in ("resnet20", "resnet32", "resnet44", "resnet56")]
    assert sizes == [269_722, 464_154, 658_586, 853_018]


def test_lenet_pair_is_dafls():
    teacher, student = build_model("lenet5", 10), build_model("lenet5_half", 10)
    assert [m.out_channels for m in (teacher.conv1, teacher.conv2, teacher.conv3)] == [6, 16, 120]
    assert [m.out_channels for m in (student.conv1, student.conv2, student.conv3)] == [3, 8, 60]
    assert (teacher.fc1.out_features, student.fc1.out_features) == (84, 42)
    assert n_bn(teacher) == 0
    with pytest.raises(ValueError, match="32x32"):
        teacher(torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_convention_and_cmi_layout_round_trip(name, tmp_path):
    """Every zoo model: (normalised feature, logits) with out_feature, the same logits without; its state_dict saved
    as CMI does ({'state_dict': ...} in {dataset}_{model}.pth) loads back through the public loader."""
    spec = model_spec(name)
    classes = 7
    model = build_model(name, classes).eval()
    x = torch.randn(2, spec.in_channels, spec.image_size or 32, spec.image_size or 32)
    feat, logits = model(x, out_feature=True)
    assert logits.shape == (2, classes) and feat.shape == (2, feature_dim(model))
    torch.testing.assert_close(feat.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model(x), logits)
    path = tmp_path / f"cifar100_{name}.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "best_acc1": 0.5}, path)
    fresh = build_model(name, classes).eval()
    load_weights(fresh, path)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    torch.testing.assert_close(fresh(x), logits, rtol=0, atol=0)


def test_loader_reads_raw_and_dataparallel_state_dicts(tmp_path):
    model = build_model("wrn_16_1", 10)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "dp.pt")
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    for f in ("dp.pt", "raw.pt"):
        fresh = build_model("wrn_16_1", 10)
        load_weights(fresh, tmp_path / f)
        assert torch.equal(fresh.fc.weight, model.fc.weight)


def test_loader_errors_are_one_line_and_name_the_problem(tmp_path):
    model = build_model("resnet20", 10)
    torch.save({"state_dict": build_model("resnet20", 100).state_dict()}, tmp_path / "c100.pt")
    with pytest.raises(DfkdError, match=r"for 100 classes .* built for 10 classes"):
        load_weights(model, tmp_path / "c100.pt", what="teacher")
    torch.save({"state_dict": build_model("resnet32", 10).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(DfkdError, match="unexpected 72 keys"):
        load_weights(model, tmp_path / "other.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(DfkdError, match="corrupt"):
        load_weights(model, tmp_path / "corrupt.pt")
    with pytest.raises(DfkdError, match="not found"):
        load_weights(model, tmp_path / "missing.pt")
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(DfkdError, match="no model state_dict"):
        load_weights(model, tmp_path / "nostate.pt")


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(DfkdError, match="unknown model 'resnet35'; known models: resnet18, resnet34"):
        build_model("resnet35", 10)
    assert type(build_model("wrn40_2", 10)) is type(build_model("WRN_40_2", 10))  # CMI spelling, any case


def test_generator_is_upstream_generator_d():
    g = ConditionalGenerator(nz=256, ngf=64, nc=3, img_size=32, num_classes=100)
    assert n_params(g) == 2_393_051  # notes §2.2: 2.39 M, of which 64,600 class embeddings
    assert sum(p.numel() for n, p in g.named_parameters() if "weights" in n or "biases" in n) == 64_600
    assert n_params(ConditionalGenerator(256, 64, 3, 64, 100)) == 8_709_083  # 8.71 M at 64 px
    # upstream parameter names (network/gan.py GeneratorD + CategoricalConditionalBatchNorm2d)
    assert [k for k in g.state_dict() if k.startswith("conv_blocks3")] == [
        "conv_blocks3_0.weight", "conv_blocks3_0.bias", "conv_blocks3_2.running_mean", "conv_blocks3_2.running_var",
        "conv_blocks3_2.num_batches_tracked", "conv_blocks3_2.weights.weight", "conv_blocks3_2.biases.weight"]
    z, y = torch.randn(6, 256), torch.randint(0, 100, (6,))
    assert g(z, y).shape == (6, 3, 32, 32)
    assert ConditionalGenerator(16, 8, 1, 8, 10)(torch.randn(4, 16), torch.randint(0, 10, (4,))).shape == (4, 1, 8, 8)


def test_generator_output_layer_is_class_conditional_bn_after_tanh():
    torch.manual_seed(0)
    g = ConditionalGenerator(nz=16, ngf=8, nc=3, img_size=8, num_classes=4).train()
    with torch.no_grad():
        g.conv_blocks3_2.weights.weight[2] = 3.0
        g.conv_blocks3_2.biases.weight[2] = -5.0
    z, y = torch.randn(32, 16), torch.arange(32) % 4
    out = g(z, y)
    # the last op is a batch norm of tanh output: per class the per-channel affine is applied to whitened data
    pre = torch.tanh(g.conv_blocks3_0(F.leaky_relu(g.conv_blocks2_1(g.conv_blocks2_0(F.interpolate(
        F.leaky_relu(g.conv_blocks1_1(g.conv_blocks1_0(F.interpolate(g.conv_blocks0_0(
            g.l1(z).view(32, 16, 2, 2), y), scale_factor=2)), y), 0.2), scale_factor=2)), y), 0.2)))
    var, mean = torch.var_mean(pre, dim=(0, 2, 3), correction=0, keepdim=True)
    expected = (pre - mean) / torch.sqrt(var + 1e-3)
    expected = torch.where((y == 2)[:, None, None, None], 3 * expected - 5, expected)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_adapter_is_upstream_wrn_adapter():
    student = build_model("wrn_16_1", 10)
    wrapped = FeatureAdapter(student, 64, 128)
    assert [k for k in wrapped.state_dict() if k.startswith("head")] == [
        "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]
    x = torch.randn(3, 3, 32, 32)
    feat, logits = wrapped(x, out_feature=True)
    assert feat.shape == (3, 128) and feature_dim(wrapped) == 128 and head_of(wrapped) is student.fc
    torch.testing.assert_close(feat, wrapped.head(student(x, out_feature=True)[0]))  # not re-normalised
    torch.testing.assert_close(wrapped(x), logits)


def test_he_resnets_load_the_shared_teachers(shared_data):
    """akamaster's CIFAR-10 ResNets load strictly after stripping 'module.'; on a 200-image subset of the test batch
    (20 per class) they score near their published accuracy (91.7-93.4 %)."""
    files = sorted(glob.glob(os.path.join(shared_data, "teachers", "*", "resnet*.th")))
    assert len(files) == 4
    test = load_images("cifar10", "test", shared_data, limit=200)
    data = dataset_info("cifar10")
    from dfkd_fast.cpsc.teacher import accuracy, load_classifier

    for path in files:
        name = os.path.basename(path).split("-")[0]
        model, norm, obj = load_classifier(name, path, data)
        assert norm == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet statistics, part of the config
        assert obj["best_prec1"] > 91
        if name in ("resnet20", "resnet56"):
            assert accuracy(model, test, norm, torch.device("cpu"), batch_size=200) >= 0.88
