"""The image model zoo: ``build_model(name, num_classes)`` and the checkpoint loader shared by every command.

Classifiers follow CPSC-DFKD's convention ``forward(x, out_feature=False)`` -> logits, or (L2-normalised pooled
feature, logits). Parameter names match the public checkpoints (CMI / Fast-Datafree ``{dataset}_{model}.pth``,
DAFL, akamaster's CIFAR-10 ResNets), so :func:`load_weights` loads them unchanged. Any other ``nn.Module``
classifier (``model(x) -> logits``, e.g. a torchvision network) is brought into that convention by
:class:`ClassifierAdapter` / :func:`as_classifier`.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.data.images import IMAGENET_NORM
from dfkd_fast.errors import DfkdError
from dfkd_fast.models import lenet, resnet, resnet_he, small_cnn, vgg, wrn
from dfkd_fast.models.adapter import FeatureAdapter, WRNAdapter
from dfkd_fast.models.generator import ConditionalGenerator, GeneratorD


@dataclass(frozen=True)
class ModelSpec:
    """How to build one zoo model and what it expects."""

    build: Callable[..., nn.Module]
    head: str  # attribute of the final nn.Linear classifier
    in_channels: int = 3
    image_size: int | None = None  # a fixed input size, where the architecture needs one
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # input normalisation of its public weights


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(resnet.resnet18, "linear"),
    "resnet34": ModelSpec(resnet.resnet34, "linear"),
    "resnet50": ModelSpec(resnet.resnet50, "linear"),
    "wrn_16_1": ModelSpec(wrn.wrn_16_1, "fc"),
    "wrn_16_2": ModelSpec(wrn.wrn_16_2, "fc"),
    "wrn_40_1": ModelSpec(wrn.wrn_40_1, "fc"),
    "wrn_40_2": ModelSpec(wrn.wrn_40_2, "fc"),
    "vgg8": ModelSpec(vgg.vgg8_bn, "classifier"),
    "vgg11": ModelSpec(vgg.vgg11_bn, "classifier"),
    "resnet20": ModelSpec(resnet_he.resnet20, "linear", norm=IMAGENET_NORM),
    "resnet32": ModelSpec(resnet_he.resnet32, "linear", norm=IMAGENET_NORM),
    "resnet44": ModelSpec(resnet_he.resnet44, "linear", norm=IMAGENET_NORM),
    "resnet56": ModelSpec(resnet_he.resnet56, "linear", norm=IMAGENET_NORM),
    "lenet5": ModelSpec(lenet.lenet5, "fc2", in_channels=1, image_size=32),
    "lenet5_half": ModelSpec(lenet.lenet5_half, "fc2", in_channels=1, image_size=32),
    "small_cnn": ModelSpec(small_cnn.small_cnn, "fc", in_channels=1),
    "small_cnn_half": ModelSpec(small_cnn.small_cnn_half, "fc", in_channels=1),
}

# Other spellings in use upstream (CMI: wrn40_2, vgg11_bn-as-vgg11; CPSC: wrn_40_2; DAFL: LeNet5Half).
ALIASES = {
    "vgg8_bn": "vgg8", "vgg11_bn": "vgg11",
    **{f"wrn{d}_{w}": f"wrn_{d}_{w}" for d in (16, 40) for w in (1, 2)},
    **{f"wrn-{d}-{w}": f"wrn_{d}_{w}" for d in (16, 40) for w in (1, 2)},
    "lenet5half": "lenet5_half", "lenet5-half": "lenet5_half",
}


def canonical_name(name: str) -> str:
    """The registry name of ``name`` (case-insensitive, aliases resolved); DfkdError listing the known ones."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise DfkdError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return key


def model_spec(name: str) -> ModelSpec:
    return MODELS[canonical_name(name)]


def build_model(name: str, num_classes: int, *, in_channels: int | None = None, **kwargs) -> nn.Module:
    """Build zoo model ``name`` for ``num_classes`` classes (DfkdError for an unknown name)."""
    spec = model_spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DfkdError(f"build_model: num_classes must be a positive int, got {num_classes!r}")
    return spec.build(num_classes=num_classes, in_channels=in_channels or spec.in_channels, **kwargs)


class ClassifierAdapter(nn.Module):
    """Any classifier ``model(x) -> logits [B, num_classes]`` in CPSC-DFKD's ``forward(x, out_feature=False)``.

    Args:
        model: the classifier; its parameters stay its own (this module's state_dict prefixes them with ``model.``).
        head: name of its final ``nn.Linear`` (``model.get_submodule`` path); default: the last ``nn.Linear`` it
            registers.
        feature_layer: name of the submodule whose output is the embedding; default: the head's input. A 4-D
            output is average-pooled over H and W; the feature is flattened and L2-normalised, as the zoo's.
    """

    def __init__(self, model: nn.Module, *, head: str | None = None, feature_layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        modules = dict(model.named_modules())
        what = type(model).__name__
        if head is None:
            linears = [name for name, m in modules.items() if name and isinstance(m, nn.Linear)]
            if not linears:
                raise DfkdError(f"{what} has no nn.Linear layer: a CPSC-DFKD teacher/student must be a classifier "
                                "model(x) -> logits whose last layer is an nn.Linear (name it with head=...)")
            head = linears[-1]
        if not isinstance(modules.get(head), nn.Linear):
            raise DfkdError(f"{what} has no nn.Linear named {head!r} (its nn.Linear layers: "
                            f"{', '.join(n for n, m in modules.items() if isinstance(m, nn.Linear)) or 'none'})")
        if feature_layer is not None and feature_layer not in modules:
            raise DfkdError(f"{what} has no submodule named {feature_layer!r} for feature_layer (top-level ones: "
                            f"{', '.join(n for n, _ in model.named_children())})")
        self.head_name, self.feature_layer = head, feature_layer
        # the feature width: the head's input unless another layer is named (then found by probe_classifier)
        self.feature_dim = modules[head].in_features if feature_layer is None else None
        self._feature: Tensor | None = None
        self._capture = False  # keep the hooked value only in out_feature calls
        if feature_layer is None:
            modules[head].register_forward_pre_hook(lambda m, args: self._keep(args[0]))
        else:
            modules[feature_layer].register_forward_hook(lambda m, args, out: self._keep(out))

    def _keep(self, value) -> None:
        if self._capture:
            self._feature = value

    @property
    def head(self) -> nn.Linear:
        return self.model.get_submodule(self.head_name)

    def forward(self, x: Tensor, out_feature: bool = False):
        if not out_feature:
            return self.model(x)
        self._capture, self._feature = True, None
        try:
            logits = self.model(x)
        finally:
            self._capture = False
        feature, self._feature = self._feature, None
        if not isinstance(feature, Tensor):
            raise DfkdError(f"{type(self.model).__name__}: the feature layer "
                            f"{self.feature_layer or self.head_name + ' (input)'} did not run in forward")
        if feature.dim() == 4:
            feature = feature.mean((2, 3))
        return F.normalize(feature.flatten(1), dim=1), logits


def follows_convention(model: nn.Module) -> bool:
    """Whether ``model`` already has ``forward(x, out_feature)`` and a head :func:`head_of` finds."""
    if isinstance(model, (ClassifierAdapter, FeatureAdapter)):
        return True
    try:
        head_of(model)
    except TypeError:
        return False
    return "out_feature" in inspect.signature(model.forward).parameters


def as_classifier(model: nn.Module, *, in_channels: int, image_size: int, what: str = "model",
                  head: str | None = None, feature_layer: str | None = None) -> nn.Module:
    """``model`` in CPSC-DFKD's convention: zoo models (and adapters) unchanged, any other classifier wrapped in a
    :class:`ClassifierAdapter`; then checked on a ``[2, in_channels, image_size, image_size]`` batch, so that a
    model that does not fit is one DfkdError saying what is expected."""
    if head is not None or feature_layer is not None or not follows_convention(model):
        try:
            model = ClassifierAdapter(model, head=head, feature_layer=feature_layer)
        except DfkdError as exc:
            raise DfkdError(f"{what}: {exc}") from None
    probe_classifier(model, in_channels, image_size, what)
    return model


@torch.no_grad()
def probe_classifier(model: nn.Module, in_channels: int, image_size: int, what: str = "model") -> None:
    """Run ``model(x, out_feature=True)`` on two blank images (eval mode, nothing changes) and check the shapes."""
    expected = (f"expected model(x) -> logits [B, num_classes] and model(x, out_feature=True) -> (feature [B, D], "
                f"logits) for x of shape [B, {in_channels}, {image_size}, {image_size}]")
    param = next(model.parameters(), None)
    x = torch.zeros(2, in_channels, image_size, image_size,
                    device=param.device if param is not None else None)
    was_training = model.training
    model.eval()
    try:
        out = model(x, out_feature=True)
    except DfkdError:
        raise
    except Exception as exc:  # the user's forward: any failure is reported with what was expected
        raise DfkdError(f"{what} {type(model).__name__} does not fit: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; {expected}") from None
    finally:
        model.train(was_training)
    ok = isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)
    num_classes = num_classes_of(model)
    if not ok or out[1].shape != (2, num_classes) or out[0].dim() != 2 or out[0].shape[0] != 2:
        shapes = [tuple(t.shape) for t in out] if ok else type(out).__name__
        raise DfkdError(f"{what} {type(model).__name__} does not fit: got {shapes} for 2 images with a head of "
                        f"{num_classes} classes; {expected}")
    if isinstance(model, ClassifierAdapter) and model.feature_dim is None:
        model.feature_dim = out[0].shape[1]


def head_of(model: nn.Module) -> nn.Linear:
    """The final classifier layer of a zoo model (or of a FeatureAdapter / ClassifierAdapter around one)."""
    model = model.model if isinstance(model, FeatureAdapter) else model
    if isinstance(model, ClassifierAdapter):
        return model.head
    for attr in ("linear", "fc", "classifier", "fc2"):
        layer = getattr(model, attr, None)
        if isinstance(layer, nn.Linear):
            return layer
    raise TypeError(f"head_of: {type(model).__name__} has no linear/fc/classifier/fc2 head")


def feature_dim(model: nn.Module) -> int:
    """Width of the feature that ``model(x, out_feature=True)`` returns."""
    if isinstance(model, FeatureAdapter):
        return model.head[-1].out_features if isinstance(model.head, nn.Sequential) else model.head.out_features
    if isinstance(model, ClassifierAdapter) and model.feature_dim is None:
        raise DfkdError("feature_dim: the width of a named feature_layer is known after probe_classifier / "
                        "as_classifier")
    return getattr(model, "feature_dim", None) or head_of(model).in_features


def num_classes_of(model: nn.Module) -> int:
    return head_of(model).out_features


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint object: ``obj['state_dict']`` (CMI, akamaster, dfkd_fast) or ``obj``
    itself (raw state_dict); the ``module.`` prefix of DataParallel/DDP is stripped."""
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DfkdError(f"{source} holds no model state_dict (expected a dict of tensors or a dict with 'state_dict')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping, *, what: str = "model",
                 name: str | None = None) -> dict:
    """Load a checkpoint (a path, or an already-loaded object named ``name``) into ``model``; returns the object.

    Strict, except that BatchNorm counters (``num_batches_tracked``, absent from checkpoints of old PyTorch
    versions) may be missing. Every problem is a one-line DfkdError naming it: missing file, corrupt file, no
    state_dict, a class-count mismatch of the head, other missing/unexpected/mis-shaped parameters.
    """
    from dfkd_fast.runs import load_checkpoint

    if isinstance(source, (str, os.PathLike)):
        name, obj = str(source), load_checkpoint(source)
    else:
        name, obj = name or "state", dict(source)
    state = extract_state_dict(obj, f"{what} checkpoint {name}")
    own = model.state_dict()
    head_key = next(f"{n}.weight" for n, m in model.named_modules() if m is head_of(model))
    if head_key in state and state[head_key].dim() == 2 and state[head_key].shape != own[head_key].shape:
        got, want = tuple(state[head_key].shape), tuple(own[head_key].shape)
        if got[0] != want[0]:
            raise DfkdError(f"{what} checkpoint {name} is for {got[0]} classes ({head_key} {got}) but the {what} "
                            f"was built for {want[0]} classes")
        raise DfkdError(f"{what} checkpoint {name} has {got[1]} features into its classifier ({head_key} {got}) "
                        f"but the {what} has {want[1]} ({want}): another width or variant of the model")
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})")
        raise DfkdError(f"{what} checkpoint {name} does not match {type(model).__name__}: {'; '.join(parts)}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise DfkdError(f"{what} checkpoint {name} does not match {type(model).__name__}: {k} has shape "
                        f"{tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(state)
    return obj


__all__ = [
    "ALIASES", "IMAGENET_NORM", "MODELS", "ClassifierAdapter", "ConditionalGenerator", "FeatureAdapter", "GeneratorD",
    "ModelSpec", "WRNAdapter", "as_classifier", "build_model", "canonical_name", "extract_state_dict", "feature_dim",
    "follows_convention", "head_of", "load_weights", "model_spec", "num_classes_of", "probe_classifier",
]
