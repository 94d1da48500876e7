"""ClassConditionalBatchNorm2d: drop-in for CPSC-DFKD's ``CategoricalConditionalBatchNorm2d``.

Same parameters and buffers under the same names (``weights.weight`` = gamma table, ``biases.weight`` = beta table,
``running_mean``, ``running_var``, ``num_batches_tracked``), so the upstream state_dict loads unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfkd_fast.ops.cond_norm import class_conditional_batch_norm


class ClassConditionalBatchNorm2d(nn.Module):
    """Affine-free batch norm followed by a per-class scale and shift looked up from the sample's label."""

    def __init__(
        self,
        num_classes: int,
        num_features: int,
        eps: float = 1e-3,
        momentum: float | None = 0.1,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.backend = backend
        self.weights = nn.Embedding(num_classes, num_features)
        self.biases = nn.Embedding(num_classes, num_features)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()
        nn.init.ones_(self.weights.weight)
        nn.init.zeros_(self.biases.weight)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        momentum = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            # momentum=None is nn.BatchNorm's cumulative average (reads the counter: one sync per step)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return class_conditional_batch_norm(
            x,
            labels,
            self.weights.weight,
            self.biases.weight,
            self.running_mean,
            self.running_var,
            training=self.training,
            momentum=momentum,
            eps=self.eps,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{self.num_classes}, {self.num_features}, eps={self.eps}, momentum={self.momentum}"
