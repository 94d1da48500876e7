"""BNStatsLoss: the batch-norm statistics loss over every BatchNorm layer of a model, collected by hooks."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from dfkd_fast.ops.bn_stats import bn_stats_loss


class BNStatsLoss(nn.Module):
    """Sum over the BatchNorm layers of ``model`` of ``||mean - running_mean||_2 + ||var - running_var||_2``.

    Forward hooks read each BatchNorm's input as the model runs (nothing is copied); calling this module returns
    the sum of the terms collected since the previous call and clears them::

        bn_loss = BNStatsLoss(teacher)
        logits = teacher(images)
        loss = ce + beta * bn_loss()

    Set ``enabled = False`` (or use :meth:`paused`) around forwards whose statistics are not needed.
    The model is not registered as a submodule: this module has no state of its own.
    """

    def __init__(self, model: nn.Module, *, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.enabled = True
        self._terms: list[Tensor] = []
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not layers:
            raise ValueError(f"BNStatsLoss: argument 'model' ({type(model).__name__}) has no BatchNorm layer")
        for layer in layers:
            if layer.running_mean is None or layer.running_var is None:
                raise ValueError(f"BNStatsLoss: {layer} tracks no running statistics")
        self.num_layers = len(layers)
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        if self.enabled:
            self._terms.append(bn_stats_loss(inputs[0], module.running_mean, module.running_var, backend=self.backend))

    def forward(self) -> Tensor:
        if not self._terms:
            raise RuntimeError("BNStatsLoss: no BatchNorm statistics collected; run the model's forward first")
        terms, self._terms = self._terms, []
        return torch.stack(terms).sum()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def clear(self) -> None:
        self._terms = []

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._terms = []
