"""Wide ResNets (ZSKT / CMI / CPSC-DFKD ``wresnet.py``): WRN-16-1, 16-2, 40-1, 40-2 with an ``fc`` head.

Parameter names match CMI's checkpoints (``block1.layer.0.bn1``, ``convShortcut``, ...).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.models._common import classifier_output


class BasicBlock(nn.Module):
    """Pre-activation block; when the shape changes, the shortcut also takes the activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout_rate)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        out = self.conv2(self.dropout(out))
        return (x if self.equalInOut else self.convShortcut(act)) + out


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, dropout_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, widen_factor: int = 1, dropout_rate: float = 0.0,
                 in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet: depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, dropout_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, dropout_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, dropout_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: Tensor, out_feature: bool = False):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        feature = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return classifier_output(feature, self.fc, out_feature)


def wrn_16_1(num_classes: int, in_channels: int = 3, dropout_rate: float = 0.0) -> WideResNet:
    return WideResNet(16, num_classes, 1, dropout_rate, in_channels)


def wrn_16_2(num_classes: int, in_channels: int = 3, dropout_rate: float = 0.0) -> WideResNet:
    return WideResNet(16, num_classes, 2, dropout_rate, in_channels)


def wrn_40_1(num_classes: int, in_channels: int = 3, dropout_rate: float = 0.0) -> WideResNet:
    return WideResNet(40, num_classes, 1, dropout_rate, in_channels)


def wrn_40_2(num_classes: int, in_channels: int = 3, dropout_rate: float = 0.0) -> WideResNet:
    """WRN-40-2: 2.26 M parameters at 100 classes."""
    return WideResNet(40, num_classes, 2, dropout_rate, in_channels)
