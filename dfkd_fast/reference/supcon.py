"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), as CPSC-DFKD uses it.

For anchors ``a_i`` with labels ``y_i`` and a contrast set ``c_j`` with labels ``t_j``, with ``s_ij = a_i . c_j / T``,
self-pairs removed (anchor ``i`` is contrast row ``i + self_offset``) and positives ``P(i) = {j != self : t_j = y_i}``:

    L_i = -(T / T_base) * ( (1/|P(i)|) sum_{p in P(i)} s_ip  -  log sum_{j != self} exp(s_ij) )
    L   = mean_i L_i

Anchors without positives contribute 0 but still count in the mean (the convention of the SupContrast code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dfkd_fast.reference._common import compute_dtype


def flatten_views(
    features: torch.Tensor, labels: torch.Tensor | None, contrast_mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, V, D] views -> (anchors, anchor_labels, contrast, contrast_labels), view-major as in SupContrast.

    ``labels=None`` is the SimCLR case: every sample is its own class, so the positives are its other views.
    The anchors are always the first rows of the contrast set (self_offset = 0).
    """
    batch, views, dim = features.shape
    if labels is None:
        labels = torch.arange(batch, device=features.device)
    contrast = features.transpose(0, 1).reshape(views * batch, dim)
    contrast_labels = labels.repeat(views)
    if contrast_mode == "one":
        return features[:, 0], labels, contrast, contrast_labels
    return contrast, contrast_labels, contrast, contrast_labels


def supcon_loss_pairs_reference(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor,
    contrast_labels: torch.Tensor,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    self_offset: int | None = 0,
    normalize: bool = False,
) -> torch.Tensor:
    acc = compute_dtype(anchors.dtype)
    a, c = anchors.to(acc), contrast.to(acc)
    if normalize:
        a, c = F.normalize(a, dim=1), F.normalize(c, dim=1)
    logits = a @ c.T / temperature
    rows = torch.arange(a.shape[0], device=a.device)[:, None]
    cols = torch.arange(c.shape[0], device=a.device)[None, :]
    if self_offset is None:
        not_self = torch.ones_like(logits, dtype=torch.bool)
    else:
        not_self = cols != rows + self_offset
    positive = not_self & (anchor_labels[:, None] == contrast_labels[None, :])
    # A row with nothing to contrast (a lone anchor) would give log(0); it has no positive either, so its value
    # is discarded below: give it a harmless finite row so that no NaN reaches the gradient.
    has_other = not_self.any(dim=1, keepdim=True)
    lse = torch.logsumexp(torch.where(has_other, logits.masked_fill(~not_self, float("-inf")), 0.0), dim=1)
    num_pos = positive.sum(dim=1)
    mean_pos = (logits * positive).sum(dim=1) / num_pos.clamp(min=1)
    per_anchor = torch.where(num_pos > 0, (temperature / base_temperature) * (lse - mean_pos), 0.0)
    return per_anchor.mean()


def supcon_loss_reference(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    normalize: bool = False,
) -> torch.Tensor:
    anchors, anchor_labels, contrast, contrast_labels = flatten_views(features, labels, contrast_mode)
    return supcon_loss_pairs_reference(
        anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature, 0, normalize
    )
