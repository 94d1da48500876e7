"""BinaryConcreteAdjacency: a sampler module that owns its RNG stream, so runs resume bit-for-bit."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dfkd_fast.ops.binary_concrete import binary_concrete_adjacency


class BinaryConcreteAdjacency(nn.Module):
    """Draws Binary Concrete adjacency matrices; see :func:`dfkd_fast.binary_concrete_adjacency`.

    Each call uses the stream ``(seed, offset)`` and then advances ``offset``, so successive calls draw fresh
    noise; ``offset`` is saved in the state_dict (as extra state), so a resumed run draws what the killed run would
    have drawn.
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
        self.backend = backend

    def forward(self, logits: Tensor, num_nodes: Tensor | list[int], tau: float | None = None) -> Tensor:
        adj = binary_concrete_adjacency(
            logits,
            num_nodes,
            self.tau if tau is None else tau,
            seed=self.seed,
            offset=self.offset,
            symmetric=self.symmetric,
            hard=self.hard,
            self_loops=self.self_loops,
            k=self.k,
            ratio=self.ratio,
            backend=self.backend,
        )
        self.offset += 1
        return adj

    def get_extra_state(self) -> Any:
        return {"seed": self.seed, "offset": self.offset}

    def set_extra_state(self, state: Any) -> None:
        self.seed, self.offset = int(state["seed"]), int(state["offset"])

    def extra_repr(self) -> str:
        return f"tau={self.tau}, symmetric={self.symmetric}, hard={self.hard}, k={self.k}, ratio={self.ratio}"
