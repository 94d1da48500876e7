"""``nn.Module`` faces of the dfkd_fast ops."""

from dfkd_fast.nn.binary_concrete import BinaryConcreteAdjacency
from dfkd_fast.nn.bn_stats import BNStatsLoss
from dfkd_fast.nn.cond_norm import ClassConditionalBatchNorm2d
from dfkd_fast.nn.supcon import SupConLoss

__all__ = ["BNStatsLoss", "BinaryConcreteAdjacency", "ClassConditionalBatchNorm2d", "SupConLoss"]
