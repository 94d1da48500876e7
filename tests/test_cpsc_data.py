"""Image datasets: embedded sources, the file formats read from --data-root (MNIST idx, CIFAR pickles,
Tiny-ImageNet folders in both val layouts), one-line errors for missing files, and the batch helpers."""

import pickle

import numpy as np
import pytest
import torch

from dfkd_fast.data.images import augment, dataset_info, denormalize, load_images, normalize
from dfkd_fast.errors import DfkdError


def test_embedded_digits_split_is_fixed_and_disjoint():
    x_train, y_train = load_images("digits", "train")
    x_test, y_test = load_images("digits", "test")
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8) and x_train.dtype == torch.uint8
    assert torch.equal(load_images("digits", "test")[0], x_test)
    assert int(x_train.max()) == 255 and set(y_test.tolist()) == set(range(10))
    train_rows = {bytes(r) for r in x_train.reshape(len(x_train), -1).numpy()}
    overlap = sum(bytes(r) in train_rows for r in x_test.reshape(len(x_test), -1).numpy())
    assert overlap < 5  # a handful of digits are pixel-identical across the split in the raw data


def test_mnist5k_is_padded_to_lenet_size():
    x, y = load_images("mnist5k", "test")
    assert x.shape == (1000, 1, 32, 32) and int(x[:, :, :2].max()) == 0 and len(set(y.tolist())) == 10


def test_mnist_and_cifar10_from_the_shared_data(shared_data):
    x, y = load_images("mnist", "train", shared_data)
    assert x.shape == (60000, 1, 32, 32) and y[:5].tolist() == [5, 0, 4, 1, 9]
    x, y = load_images("cifar10", "test", shared_data)
    assert x.shape == (10000, 3, 32, 32) and torch.bincount(y).tolist() == [1000] * 10
    mean = (x.float() / 255).mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor([0.4942, 0.4851, 0.4504]), atol=1e-4, rtol=0)
    strided = load_images("cifar10", "test", shared_data, limit=100)[1]
    assert torch.bincount(strided).tolist() == [10] * 10


def test_cifar100_pickle_and_missing_files(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072)
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": [3, 99, 0, 7], b"coarse_labels": [0, 1, 2, 3]}, f)
    x, y = load_images("cifar100", "test", tmp_path)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [3, 99, 0, 7]
    assert torch.equal(x[1, 0, 0, :3], torch.tensor([0, 1, 2], dtype=torch.uint8))  # R plane first, row-major
    with pytest.raises(DfkdError, match="cifar100: file train not found"):
        load_images("cifar100", "train", tmp_path)
    (folder / "test").write_bytes(b"garbage")
    with pytest.raises(DfkdError, match="cifar100: cannot read"):
        load_images("cifar100", "test", tmp_path)
    with pytest.raises(DfkdError, match="needs|pass --data-root"):
        load_images("cifar10", "test", None)
    with pytest.raises(DfkdError, match="unknown dataset 'imagenet'; known datasets: digits"):
        dataset_info("imagenet")


@pytest.mark.parametrize("val_layout", ["annotations", "folders"])
def test_tiny_imagenet_both_val_layouts(tmp_path, val_layout):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colour = {"n01": (255, 0, 0), "n02": (0, 0, 255)}
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        Image.new("RGB", (64, 64), colour[w]).save(root / "train" / w / "images" / f"{w}_0.JPEG")
    if val_layout == "annotations":
        (root / "val" / "images").mkdir(parents=True)
        lines = []
        for i, w in enumerate(["n02", "n01", "n02"]):
            Image.new("RGB", (64, 64), colour[w]).save(root / "val" / "images" / f"val_{i}.JPEG")
            lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
        expected = [1, 0, 1]
    else:
        for w in wnids:
            (root / "val" / w).mkdir(parents=True)
            Image.new("RGB", (64, 64), colour[w]).save(root / "val" / w / "v.JPEG")
        expected = [0, 1]
    x, y = load_images("tiny-imagenet", "test", tmp_path)
    assert x.shape == (len(expected), 3, 64, 64) and y.tolist() == expected
    assert all((int(x[i, 0].float().mean()) > 200) == (label == 0) for i, label in enumerate(expected))
    x, y = load_images("tiny_imagenet", "train", tmp_path)
    assert y.tolist() == [0, 1]


def test_normalize_round_trip_and_augment():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    torch.testing.assert_close(denormalize(normalize(x, mean, std), mean, std), x.float() / 255)
    torch.manual_seed(0)
    out = augment(x, pad=2, flip=False)
    assert out.shape == x.shape and out.dtype == x.dtype
    # every augmented image is an 8x8 window of the zero-padded original
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(5):
        windows = padded[i].unfold(1, 8, 1).unfold(2, 8, 1)  # [C, 5, 5, 8, 8]
        assert any(torch.equal(windows[:, a, b], out[i]) for a in range(5) for b in range(5))
