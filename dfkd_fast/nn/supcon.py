"""SupConLoss: drop-in for the SupContrast / CPSC-DFKD ``SupConLoss`` module."""

from __future__ import annotations

from torch import Tensor, nn

from dfkd_fast.ops.supcon import supcon_loss


class SupConLoss(nn.Module):
    """Supervised contrastive loss over ``[B, V, D]`` features; see :func:`dfkd_fast.supcon_loss`."""

    def __init__(
        self,
        temperature: float = 0.07,
        contrast_mode: str = "all",
        base_temperature: float = 0.07,
        normalize: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.contrast_mode = contrast_mode
        self.base_temperature = base_temperature
        self.normalize = normalize
        self.backend = backend

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return supcon_loss(
            features,
            labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            contrast_mode=self.contrast_mode,
            normalize=self.normalize,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, " \
               f"base_temperature={self.base_temperature}, normalize={self.normalize}"
