"""Philox4x32-10 counter-based RNG (Salmon et al., SC 2011) in plain PyTorch.

The C++ and CUDA kernels (csrc/philox.h) compute the same numbers, so a sample is a pure function of
``(seed, offset, element index)`` on every device:

* element ``e`` of a flat tensor takes word ``e % 4`` of ``Philox4x32_10(counter, key)`` with
  ``counter = (g_lo, g_hi, offset_lo, offset_hi)`` for ``g = e // 4`` and ``key = (seed_lo, seed_hi)``;
* the uniform is ``u = ((word >> 9) + 0.5) * 2**-23``, exactly representable in float32 and strictly inside (0, 1).

``offset`` selects an independent stream: draw each new sample with a new offset (e.g. the step number).
uint32 arithmetic is emulated in int64 with 16-bit partial products, so nothing overflows.

``philox_uniform`` is a custom op so that ``torch.compile`` of a reference treats the generator as one opaque call:
inlined, the ten rounds form an expression tree that Inductor cannot lower in reasonable time.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product ``a * m`` (``a`` holds uint32 values in int64)."""
    p_lo = a * (m & 0xFFFF)  # < 2**48
    p_hi = a * (m >> 16)  # < 2**48
    t = p_lo + ((p_hi & 0xFFFF) << 16)  # low 48 bits of the product, plus carry room
    return ((p_hi >> 16) + (t >> 32)) & MASK32, t & MASK32


def philox4x32(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], key: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with ROUNDS rounds on int64 tensors holding uint32 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@torch.library.custom_op("dfkd_fast::philox_uniform", mutates_args=())
def _philox_uniform(numel: int, seed: int, offset: int, device: torch.device) -> torch.Tensor:
    groups = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    counter = (
        groups & MASK32,
        groups >> 32,
        torch.full_like(groups, offset & MASK32),
        torch.full_like(groups, (offset >> 32) & MASK32),
    )
    words = torch.stack(philox4x32(counter, (seed & MASK32, (seed >> 32) & MASK32)), dim=1).reshape(-1)[:numel]
    return ((words >> 9).to(torch.float32) + 0.5) * 2.0**-23


@_philox_uniform.register_fake
def _(numel, seed, offset, device):
    return torch.empty(numel, dtype=torch.float32, device=device)


def philox_uniform(numel: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``numel`` float32 uniforms in (0, 1) for elements 0..numel-1 of stream ``(seed, offset)``."""
    return _philox_uniform(numel, seed, offset, torch.device(device))
