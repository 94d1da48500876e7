"""BinaryConcreteAdjacency: a sampler module that owns its RNG stream, so runs resume bit-for-bit."""

from __future__ import annotations

import threading
from typing import Any

from torch import Tensor, nn

from dfkd_fast.ops.binary_concrete import binary_concrete_adjacency


# Serialises offset reservations of every sampler (a few bytecodes each); module-level, so that a sampler still
# deep-copies and pickles.
_OFFSET_LOCK = threading.Lock()


class BinaryConcreteAdjacency(nn.Module):
    """Draws Binary Concrete adjacency matrices; see :func:`dfkd_fast.binary_concrete_adjacency`.

    Each call uses the stream ``(seed, offset)`` and then advances ``offset``, so successive calls draw fresh
    noise; ``offset`` is saved in the state_dict (as extra state), so a resumed run draws what the killed run would
    have drawn. Thread-safe: each call reserves its offset atomically before sampling, so threads sharing a sampler
    draw distinct streams (which thread gets which offset is up to the scheduler); a call that raises still uses
    up its offset.
    """

    def __init__(
        self,
        tau: float = 2.0 / 3.0,
        *,
        seed: int = 0,
        symmetric: bool = True,
        hard: bool = False,
        self_loops: bool = False,
        k: int | None = None,
        ratio: float | None = None,
        per_node: float | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.tau = tau
        self.seed = seed
        self.offset = 0
        self.symmetric = symmetric
        self.hard = hard
        self.self_loops = self_loops
        self.k = k
        self.ratio = ratio
        self.per_node = per_node
        self.backend = backend

    def forward(self, logits: Tensor, num_nodes: Tensor | list[int], tau: float | None = None) -> Tensor:
        with _OFFSET_LOCK:
            offset = self.offset
            self.offset = offset + 1
        return binary_concrete_adjacency(
            logits,
            num_nodes,
            self.tau if tau is None else tau,
            seed=self.seed,
            offset=offset,
            symmetric=self.symmetric,
            hard=self.hard,
            self_loops=self.self_loops,
            k=self.k,
            ratio=self.ratio,
            per_node=self.per_node,
            backend=self.backend,
        )

    def get_extra_state(self) -> Any:
        return {"seed": self.seed, "offset": self.offset}

    def set_extra_state(self, state: Any) -> None:
        self.seed, self.offset = int(state["seed"]), int(state["offset"])

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, symmetric={self.symmetric}, hard={self.hard}, k={self.k}, ratio={self.ratio}, "
                f"per_node={self.per_node}")
