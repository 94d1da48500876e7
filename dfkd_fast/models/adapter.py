"""The feature adapter of CPSC-DFKD (upstream ``WRNAdapter``): maps a student's feature to the teacher's width.

The student's (already L2-normalised) feature goes through ``Linear(d_s, d_s) - ReLU - Linear(d_s, d_t)`` and is
*not* re-normalised, as upstream. Only the contrastive term reads it, and that term only trains the generator, so
the adapter stays at its random initialisation (CPSC-DFKD §2.1: a fixed random projection). Parameter names
(``model.*``, ``head.0.*``, ``head.2.*``) match upstream's wrapped student.
"""

from __future__ import annotations

from torch import Tensor, nn


class FeatureAdapter(nn.Module):
    def __init__(self, model: nn.Module, feat_in: int, feat_out: int, head: str = "mlp") -> None:
        super().__init__()
        self.model = model
        if head == "linear":
            self.head = nn.Linear(feat_in, feat_out)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(feat_in, feat_in), nn.ReLU(inplace=True), nn.Linear(feat_in, feat_out))
        else:
            raise ValueError(f"FeatureAdapter: argument 'head' must be 'mlp' or 'linear', got {head!r}")

    def forward(self, x: Tensor, out_feature: bool = False):
        if not out_feature:
            return self.model(x)
        feature, logits = self.model(x, out_feature=True)
        return self.head(feature), logits


WRNAdapter = FeatureAdapter  # upstream name
