"""BNStatsLoss: the batch-norm statistics loss over every BatchNorm layer of a model, collected by hooks."""

from __future__ import annotations

import contextlib
import threading
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

    Set ``enabled = False`` (every thread) or use :meth:`paused` (the calling thread) around forwards whose
    statistics are not needed. The model is not registered as a submodule: this module has no state of its own.

    Threads: the collected terms are per thread, so a model forwarded by several threads at once gives each thread
    the sum of its own forwards; :meth:`clear` and :meth:`remove` drop every thread's terms.
    """

    def __init__(self, model: nn.Module, *, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.enabled = True
        self._local = threading.local()  # .terms: this thread's collected terms; .paused
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not layers:
            raise ValueError(f"BNStatsLoss: argument 'model' ({type(model).__name__}) has no BatchNorm layer")
        for layer in layers:
            if layer.running_mean is None or layer.running_var is None:
                raise ValueError(f"BNStatsLoss: {layer} tracks no running statistics")
        self.num_layers = len(layers)
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    @property
    def _terms(self) -> list[Tensor]:
        if not hasattr(self._local, "terms"):
            self._local.terms = []
        return self._local.terms

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        if self.enabled and not getattr(self._local, "paused", False):
            self._terms.append(bn_stats_loss(inputs[0], module.running_mean, module.running_var, backend=self.backend))

    def forward(self) -> Tensor:
        terms = self._terms
        if not terms:
            raise RuntimeError("BNStatsLoss: no BatchNorm statistics collected in this thread; run the model's "
                               "forward first")
        self._local.terms = []
        return torch.stack(terms).sum()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Collect nothing in the calling thread for the duration of a block."""
        paused, self._local.paused = getattr(self._local, "paused", False), True
        try:
            yield
        finally:
            self._local.paused = paused

    def clear(self) -> None:
        self._local = threading.local()

    # threading.local cannot be copied or pickled (e.g. by copy.deepcopy of the hooked model): start afresh
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def remove(self) -> None:
        """Detach the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()
