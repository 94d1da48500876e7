"""Plain-PyTorch implementations of every op, written as the textbook formula.

They are the oracle of the tests, the baseline of the benchmarks and the fallback wherever no fused kernel applies
(``backend="reference"``). Gradients come from autograd. Reductions run in float32 (float64 for float64 inputs).
"""

from dfkd_fast.reference.binary_concrete import binary_concrete_adjacency_reference
from dfkd_fast.reference.bn_stats import bn_stats_loss_reference
from dfkd_fast.reference.cond_norm import class_conditional_batch_norm_reference
from dfkd_fast.reference.philox import philox_uniform
from dfkd_fast.reference.supcon import supcon_loss_pairs_reference, supcon_loss_reference

__all__ = [
    "binary_concrete_adjacency_reference",
    "bn_stats_loss_reference",
    "class_conditional_batch_norm_reference",
    "philox_uniform",
    "supcon_loss_pairs_reference",
    "supcon_loss_reference",
]
