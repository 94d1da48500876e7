"""The functional API: validated entry points over the custom ops and their reference fallbacks."""

from dfkd_fast.ops.binary_concrete import adjacency_to_pyg, binary_concrete_adjacency
from dfkd_fast.ops.bn_stats import bn_stats_loss
from dfkd_fast.ops.cond_norm import class_conditional_batch_norm
from dfkd_fast.ops.supcon import supcon_loss, supcon_loss_pairs

__all__ = [
    "adjacency_to_pyg",
    "binary_concrete_adjacency",
    "bn_stats_loss",
    "class_conditional_batch_norm",
    "supcon_loss",
    "supcon_loss_pairs",
]
