"""What every classifier of the zoo shares: the ``forward(x, out_feature=False)`` output convention of CPSC-DFKD."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def classifier_output(feature: Tensor, head, out_feature: bool):
    """``logits``, or ``(L2-normalised pooled feature, logits)`` when ``out_feature`` (CPSC-DFKD §2.1)."""
    logits = head(feature)
    if out_feature:
        return F.normalize(feature, p=2, dim=1), logits
    return logits
