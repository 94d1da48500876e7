"""A small CNN for 8x8 images (scikit-learn's digits): the teacher/student pair of the CPU demo.

Three 3x3 conv + BatchNorm + ReLU layers (one 2x2 max-pool), global average pooling and an ``fc`` head. Batch norm
matters here: the BN-statistics term of CPSC-DFKD needs BatchNorm layers in the teacher.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.models._common import classifier_output


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, width), _conv_bn(width, 2 * width), nn.MaxPool2d(2), _conv_bn(2 * width, 4 * width)
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor, out_feature: bool = False):
        feature = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return classifier_output(feature, self.fc, out_feature)


def small_cnn(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Width 32 (128-d feature, 0.10 M parameters): the demo's teacher."""
    return SmallCNN(num_classes, in_channels, 32)


def small_cnn_half(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    """Width 16 (64-d feature, 4x fewer parameters): the demo's student."""
    return SmallCNN(num_classes, in_channels, 16)
