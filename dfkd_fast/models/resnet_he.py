"""He et al.'s CIFAR ResNet-20/32/44/56 (option-A shortcut), as in akamaster/pytorch_resnet_cifar10.

Parameter names match that repository's checkpoints (after stripping the ``module.`` prefix of DataParallel), so
the pretrained CIFAR-10 teachers load unchanged. Those teachers expect inputs normalised with the ImageNet mean and
std (see :data:`dfkd_fast.models.IMAGENET_NORM`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.models._common import classifier_output


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: a parameter-free shortcut (subsample, zero-pad the new channels), hence no shortcut weights.
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None

    def shortcut(self, x: Tensor) -> Tensor:
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetHe(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNetHe: depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor, out_feature: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        feature = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return classifier_output(feature, self.linear, out_feature)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNetHe:
    return ResNetHe(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> ResNetHe:
    return ResNetHe(32, num_classes, in_channels)


def resnet44(num_classes: int = 10, in_channels: int = 3) -> ResNetHe:
    return ResNetHe(44, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNetHe:
    return ResNetHe(56, num_classes, in_channels)
