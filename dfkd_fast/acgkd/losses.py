"""Losses of graph distillation: pseudo-graph generation, logit KD, feature matching, adversarial temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfkd_fast.acgkd.pseudo_graphs import feature_entropy


def generation_loss(logits: Tensor, labels: Tensor, bn: Tensor, probabilities: Tensor, mask: Tensor, *,
                    w_ce: float = 1.0, w_bn: float = 0.01, w_entropy: float = 1e-6) -> dict[str, Tensor]:
    """``w_ce * CE(teacher(G), y) + w_bn * L_BN + w_entropy * H(features)`` (GFKD's loss; ACGKD keeps its terms).

    ``bn`` is the BN-statistics loss the teacher's BatchNorm hooks collected over the valid nodes of the graphs;
    ``probabilities [B, n, F]`` are the node-feature distributions ``softmax(Z)`` and ``mask [B, n]`` the valid nodes.
    """
    ce = F.cross_entropy(logits, labels)
    entropy = feature_entropy(probabilities, mask)
    return {"loss": w_ce * ce + w_bn * bn + w_entropy * entropy, "ce": ce, "bn": bn, "entropy": entropy}


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor | float) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T)) * T^2``, averaged over graphs (Hinton; GFKD uses T = 2)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * temperature**2


def feature_loss(student_feature: Tensor, teacher_feature: Tensor, kind: str = "sum",
                 num_nodes: Tensor | None = None) -> Tensor:
    """SimKD's feature term between projected student and teacher pooled features ``[B, H]``.

    ``sum``: MSE of the sum-pooled features (their scale grows with the graph and swings with resampled edges);
    ``mean``: MSE of the mean-pooled features (``num_nodes [B]`` per graph); ``cosine``: ``1 - cos`` per graph,
    averaged (scale-free: the KD term alone sets the logits' scale).
    """
    if kind == "cosine":
        return (1 - F.cosine_similarity(student_feature, teacher_feature, dim=1)).mean()
    if kind == "mean":
        scale = num_nodes.to(student_feature.dtype).clamp(min=1)[:, None]
        return F.mse_loss(student_feature / scale, teacher_feature / scale)
    if kind == "sum":
        return F.mse_loss(student_feature, teacher_feature)
    raise ValueError(f"feature_loss: argument 'kind' must be cosine, mean or sum, got {kind!r}")


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.strength * grad, None


def gradient_reversal(x: Tensor, strength: float) -> Tensor:
    """Identity forward, ``-strength * grad`` backward: what minimises the loss downstream maximises it here."""
    return _GradientReversal.apply(x, strength)


def cosine_ramp(epoch: int, ramp_epochs: int, maximum: float) -> float:
    """CTKD's reversal curriculum: 0 at epoch 0, rising in cosine shape to ``maximum`` at ``ramp_epochs``."""
    if ramp_epochs <= 0:
        return maximum
    return maximum * 0.5 * (1 - math.cos(math.pi * min(epoch, ramp_epochs) / ramp_epochs))


class AdversarialTemperature(nn.Module):
    """CTKD's global temperature ``tau = t_min + t_range * sigmoid(theta)``, learnt through gradient reversal.

    The student's optimiser steps ``theta`` too: the reversal makes that step *increase* the KD loss, so the
    temperature keeps the distillation hard while the student catches up.
    """

    def __init__(self, t_min: float = 1.0, t_range: float = 10.0, init: float = 2.0) -> None:
        super().__init__()
        self.t_min, self.t_range = t_min, t_range
        p = min(max((init - t_min) / t_range, 1e-3), 1 - 1e-3)
        self.theta = nn.Parameter(torch.tensor(math.log(p / (1 - p))))

    def forward(self, strength: float) -> Tensor:
        return self.t_min + self.t_range * torch.sigmoid(gradient_reversal(self.theta, strength))
