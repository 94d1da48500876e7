"""The trainer of each method: :func:`make_trainer` (ACGKD, the GFKD baseline, KD with the real training graphs).

Kept apart from :mod:`~dfkd_fast.acgkd.trainer` so that the imports run one way: ``gfkd -> trainer`` and
``methods -> trainer, gfkd``, never back.
"""

from __future__ import annotations

from dfkd_fast.acgkd.config import DistillConfig
from dfkd_fast.acgkd.gfkd import GFKDTrainer, RealKDTrainer
from dfkd_fast.acgkd.trainer import ACGKDTrainer, GraphDistiller
from dfkd_fast.models.gnn import GNN

TRAINERS = {"acgkd": ACGKDTrainer, "gfkd": GFKDTrainer, "real": RealKDTrainer}


def make_trainer(config: DistillConfig, teacher: GNN, **kwargs) -> GraphDistiller:
    """The trainer of ``config.method``: ACGKD, the GFKD baseline, or KD with the real training graphs."""
    return TRAINERS[config.method](config, teacher, **kwargs)
