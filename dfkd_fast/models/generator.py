"""The conditional generator of CPSC-DFKD (upstream ``GeneratorD``), on dfkd_fast's class-conditional batch norm.

    z [B, nz] -> Linear(nz, 2*ngf*s*s) -> [B, 2*ngf, s, s] -> CBN
      -> up x2 -> Conv3x3(2ngf, 2ngf) -> CBN -> LeakyReLU(0.2)
      -> up x2 -> Conv3x3(2ngf, ngf)  -> CBN -> LeakyReLU(0.2)
      -> Conv3x3(ngf, nc) -> Tanh -> CBN(nc)                       s = img_size // 4

The class label enters only through the four CBN layers (batch norm without affine, then a per-class scale and
shift); the last one, after the Tanh, gives each class its own output scale and shift, so the image comes out in
the teacher's normalised input space. ``ngf`` = 64 is upstream's width; smaller values make CPU demos fast.
Parameter names match upstream, so its generator checkpoints load unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.nn import ClassConditionalBatchNorm2d


class ConditionalGenerator(nn.Module):
    def __init__(self, nz: int = 256, ngf: int = 64, nc: int = 3, img_size: int = 32, num_classes: int = 10,
                 backend: str | None = None) -> None:
        super().__init__()
        if img_size % 4 or img_size < 4:
            raise ValueError(f"ConditionalGenerator: img_size must be a positive multiple of 4, got {img_size}")
        self.nz, self.num_classes, self.img_size = nz, num_classes, img_size
        self.init_size = img_size // 4

        def cbn(channels: int) -> ClassConditionalBatchNorm2d:
            return ClassConditionalBatchNorm2d(num_classes, channels, backend=backend)

        self.l1 = nn.Sequential(nn.Linear(nz, ngf * 2 * self.init_size**2))
        self.conv_blocks0_0 = cbn(ngf * 2)
        self.conv_blocks1_0 = nn.Conv2d(ngf * 2, ngf * 2, 3, stride=1, padding=1)
        self.conv_blocks1_1 = cbn(ngf * 2)
        self.conv_blocks1_2 = nn.LeakyReLU(0.2, inplace=True)
        self.conv_blocks2_0 = nn.Conv2d(ngf * 2, ngf, 3, stride=1, padding=1)
        self.conv_blocks2_1 = cbn(ngf)
        self.conv_blocks2_2 = nn.LeakyReLU(0.2, inplace=True)
        self.conv_blocks3_0 = nn.Conv2d(ngf, nc, 3, stride=1, padding=1)
        self.conv_blocks3_1 = nn.Tanh()
        self.conv_blocks3_2 = cbn(nc)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        out = self.l1(z.flatten(1))
        out = out.view(out.shape[0], -1, self.init_size, self.init_size)
        img = F.interpolate(self.conv_blocks0_0(out, labels), scale_factor=2)
        img = self.conv_blocks1_2(self.conv_blocks1_1(self.conv_blocks1_0(img), labels))
        img = F.interpolate(img, scale_factor=2)
        img = self.conv_blocks2_2(self.conv_blocks2_1(self.conv_blocks2_0(img), labels))
        img = self.conv_blocks3_1(self.conv_blocks3_0(img))
        return self.conv_blocks3_2(img, labels)


GeneratorD = ConditionalGenerator  # upstream name
