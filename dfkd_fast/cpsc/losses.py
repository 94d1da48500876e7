"""The loss terms of CPSC-DFKD (``notes/cpsc-dfkd.md`` §2.3), each as upstream computes it.

Notation: T/S = teacher/student logits ``[B, C]``, y = the generator's condition labels. Every term is computed in
float32 (logits may come out of a bf16 autocast region).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfkd_fast.ops import supcon_loss_pairs

# Upstream builds ``SupConLoss(temperature=args.temp)`` and leaves ``base_temperature`` at SupContrast's default:
# the loss is scaled by ``temp / 0.07``, which is 1 only at the default ``--temp 0.07``.
UPSTREAM_BASE_TEMPERATURE = 0.07


def kd_loss(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """DAFL's ``kdloss``: KL(softmax(T) || softmax(S)) summed over classes, averaged over the batch (T = 1).

    The teacher's distribution enters as log-probabilities (``log_target``): the same value as upstream's
    ``kl_div(log_softmax(S), softmax(T))``, but where a teacher probability underflows to 0 upstream's gradient with
    respect to the teacher logits is ``0 * log 0 = NaN`` (it reaches the generator), and this one is the correct 0.
    """
    s, t = s_logits.float(), t_logits.float()
    return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="sum", log_target=True) / s.shape[0]


def ikd_generator(s_logits: Tensor, t_logits: Tensor, log_form: bool) -> Tensor:
    """The generator's IKD term: ``-MSE(S, T)``, or ``-log MSE(S, T)`` (CIFAR-10); T is detached."""
    mse = F.mse_loss(s_logits.float(), t_logits.detach().float())
    return -torch.log(mse) if log_form else -mse


def ikd_student(s_logits: Tensor, t_logits: Tensor, log_form: bool) -> Tensor:
    """The student's IKD term: ``MSE(S, T)``, or ``log ||T - S||_F`` over the whole batch (CIFAR-10)."""
    s, t = s_logits.float(), t_logits.detach().float()
    return torch.log(torch.linalg.vector_norm(t - s)) if log_form else F.mse_loss(s, t)


def ce_loss(logits: Tensor, labels: Tensor, on_logits: bool = False) -> Tensor:
    """Cross-entropy to the condition labels. Upstream applies it to softmax *probabilities* (a second softmax
    inside ``F.cross_entropy``: small, bounded gradients); ``on_logits=True`` is the usual CE, a known fix."""
    x = logits.float()
    return F.cross_entropy(x if on_logits else F.softmax(x, dim=1), labels)


def contrastive_anchors(s_feat: Tensor, t_feat: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The ``2B`` SupCon anchors of a batch (student views, then teacher views; float32) and their labels."""
    return torch.cat([s_feat, t_feat]).float(), labels.repeat(2)


def contrastive_loss(s_feat: Tensor, t_feat: Tensor, labels: Tensor, temperature: float, *,
                     contrast: tuple[Tensor, Tensor] | None = None, self_offset: int = 0,
                     backend: str | None = None) -> Tensor:
    """Pseudo-supervised contrast: SupCon over the student and teacher embeddings of the same images, positives =
    same condition label, all-anchor mode, ``base_temperature`` 0.07 whatever ``temperature`` is (upstream's
    ``SupConLoss(temperature=args.temp)``: the loss carries the factor ``temperature / 0.07``).

    The anchors are this batch's ``2B`` vectors. By default they are also the contrast set. Multi-GPU: ``contrast``
    is every process's anchors (all-gathered with gradient) and this process's block starts at row
    ``self_offset``; the loss is the mean over the local anchors, so averaging it over processes (what DDP does to
    the gradients) gives the single-process loss over the global batch.
    """
    anchors, anchor_labels = contrastive_anchors(s_feat, t_feat, labels)
    contrast_feats, contrast_labels = contrast if contrast is not None else (anchors, anchor_labels)
    return supcon_loss_pairs(anchors, anchor_labels, contrast_feats, contrast_labels, temperature=temperature,
                             base_temperature=UPSTREAM_BASE_TEMPERATURE, self_offset=self_offset, backend=backend)
