"""VGG-8/11 with batch norm (RepDistiller / CMI / CPSC-DFKD ``vgg.py``), ``classifier`` head.

Parameter names match CMI's checkpoints (``block0.0.weight``, ``block0.1.running_mean``, ...). At 32 px the fourth
max-pool is skipped, as upstream does (it applies only to 64 px inputs).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.models._common import classifier_output

CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
}


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], batch_norm: bool = True, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        inputs = [in_channels] + [block[-1] for block in cfg[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            self._make_layers(c, batch_norm, i) for c, i in zip(cfg, inputs))
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    @staticmethod
    def _make_layers(cfg: list[int], batch_norm: bool, in_channels: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in cfg:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
        return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward

    def forward(self, x: Tensor, out_feature: bool = False):
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = self.pool4(F.relu(self.block4(x)))
        return classifier_output(x.flatten(1), self.classifier, out_feature)


def vgg8_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CFG["vgg8"], True, num_classes, in_channels)


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11-BN: 9.28 M parameters at 100 classes."""
    return VGG(CFG["vgg11"], True, num_classes, in_channels)
