"""LeNet-5 and LeNet-5-half, DAFL's MNIST teacher/student pair (32x32 greyscale input, no batch norm).

Parameter names match DAFL's ``lenet.py``. The feature returned with ``out_feature=True`` is the 120-d (60-d for
the half network) output of ``conv3``, DAFL's ``feature``.
"""

from __future__ import annotations

from torch import Tensor, nn

from dfkd_fast.models._common import classifier_output


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, f1 = (max(1, round(c * width)) for c in (6, 16, 120, 84))
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.maxpool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.maxpool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=5)
        self.relu3 = nn.ReLU()
        self.fc1 = nn.Linear(c3, f1)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(f1, num_classes)
        self.feature_dim = c3

    def _head(self, feature: Tensor) -> Tensor:
        return self.fc2(self.relu4(self.fc1(feature)))

    def forward(self, x: Tensor, out_feature: bool = False):
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"{type(self).__name__}: expects 32x32 images, got shape {tuple(x.shape)}")
        out = self.maxpool1(self.relu1(self.conv1(x)))
        out = self.maxpool2(self.relu2(self.conv2(out)))
        feature = self.relu3(self.conv3(out)).flatten(1)
        return classifier_output(feature, self._head, out_feature)


def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels, 1.0)


def lenet5_half(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """DAFL's LeNet-5-half: every layer at half width (3, 8, 60, 42 channels)."""
    return LeNet5(num_classes, in_channels, 0.5)
