"""supcon_loss: the pseudo-supervised contrastive loss of CPSC-DFKD (SupCon semantics).

Custom ops ``dfkd_fast::supcon_fwd`` (loss and per-anchor log-sum-exp) and ``dfkd_fast::supcon_bwd`` (gradients,
recomputed from the inputs and the O(N) statistics), their fake kernels and autograd formula, and the validated
functional API. The maths is in :mod:`dfkd_fast.reference.supcon`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfkd_fast import _checks
from dfkd_fast._backend import use_fused
from dfkd_fast.reference._common import compute_dtype
from dfkd_fast.reference.supcon import flatten_views, supcon_loss_pairs_reference

NO_SELF = -1  # self_offset value meaning "the anchors are not part of the contrast set"


def _similarities(anchors: Tensor, contrast: Tensor, inv_temperature: float, normalize: bool):
    acc = compute_dtype(anchors.dtype)
    a, c = anchors.to(acc), contrast.to(acc)
    if normalize:
        a, c = F.normalize(a, dim=1), F.normalize(c, dim=1)
    return a, c, (a @ c.T) * inv_temperature


def _masks(anchor_labels: Tensor, contrast_labels: Tensor, self_offset: int):
    rows = torch.arange(anchor_labels.shape[0], device=anchor_labels.device)[:, None]
    cols = torch.arange(contrast_labels.shape[0], device=anchor_labels.device)[None, :]
    not_self = cols != rows + self_offset if self_offset != NO_SELF else torch.ones_like(cols != rows)
    positive = not_self & (anchor_labels[:, None] == contrast_labels[None, :])
    return not_self, positive


@torch.library.custom_op("dfkd_fast::supcon_fwd", mutates_args=())
def supcon_fwd(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    inv_temperature: float,
    scale: float,
    self_offset: int,
    normalize: bool,
) -> tuple[Tensor, Tensor]:
    """(loss, lse[N]) in the compute dtype; ``scale`` = temperature / base_temperature."""
    _, _, logits = _similarities(anchors, contrast, inv_temperature, normalize)
    not_self, positive = _masks(anchor_labels, contrast_labels, self_offset)
    lse = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1)
    num_pos = positive.sum(1)
    per_anchor = torch.where(num_pos > 0, scale * (lse - (logits * positive).sum(1) / num_pos.clamp(min=1)), 0.0)
    return per_anchor.mean(), lse


@supcon_fwd.register_fake
def _(anchors, anchor_labels, contrast, contrast_labels, inv_temperature, scale, self_offset, normalize):
    acc = compute_dtype(anchors.dtype)
    return anchors.new_empty((), dtype=acc), anchors.new_empty(anchors.shape[0], dtype=acc)


@torch.library.custom_op("dfkd_fast::supcon_bwd", mutates_args=())
def supcon_bwd(
    grad_loss: Tensor,
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    lse: Tensor,
    inv_temperature: float,
    scale: float,
    self_offset: int,
    normalize: bool,
) -> tuple[Tensor, Tensor]:
    """(d_anchors, d_contrast) in the input dtypes."""
    a, c, logits = _similarities(anchors, contrast, inv_temperature, normalize)
    not_self, positive = _masks(anchor_labels, contrast_labels, self_offset)
    num_pos = positive.sum(1, keepdim=True).to(logits.dtype)
    weight = grad_loss * scale / anchors.shape[0] * (num_pos > 0)
    prob = torch.exp(logits - lse[:, None]).masked_fill(~not_self, 0.0)
    d_logits = weight * (prob - positive / num_pos.clamp(min=1)) * inv_temperature
    da, dc = d_logits @ c, d_logits.T @ a
    if normalize:  # through x / |x|: (I - x_hat x_hat^T) / |x|
        da = (da - a * (da * a).sum(1, keepdim=True)) / anchors.to(a.dtype).norm(dim=1, keepdim=True).clamp(min=1e-12)
        dc = (dc - c * (dc * c).sum(1, keepdim=True)) / contrast.to(c.dtype).norm(dim=1, keepdim=True).clamp(min=1e-12)
    return da.to(anchors.dtype), dc.to(contrast.dtype)


@supcon_bwd.register_fake
def _(grad_loss, anchors, anchor_labels, contrast, contrast_labels, lse, inv_temperature, scale, self_offset, normalize):
    return torch.empty_like(anchors), torch.empty_like(contrast)


def _setup_context(ctx, inputs, output):
    anchors, anchor_labels, contrast, contrast_labels, *params = inputs
    ctx.save_for_backward(anchors, anchor_labels, contrast, contrast_labels, output[1])
    ctx.params = params
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, _grad_lse):
    d_anchors, d_contrast = supcon_bwd(grad_loss, *ctx.saved_tensors, *ctx.params)
    return d_anchors, None, d_contrast, None, None, None, None, None


torch.library.register_autograd("dfkd_fast::supcon_fwd", _backward, setup_context=_setup_context)


def _dispatch(fn, anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature, self_offset,
              normalize, backend) -> Tensor:
    if use_fused(fn, backend, anchors.device, "triton"):
        loss, _ = supcon_fwd(
            anchors,
            anchor_labels.to(torch.int64),
            contrast,
            contrast_labels.to(torch.int64),
            1.0 / temperature,
            temperature / base_temperature,
            NO_SELF if self_offset is None else self_offset,
            normalize,
        )
        return loss
    return supcon_loss_pairs_reference(
        anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature, self_offset, normalize
    )


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    normalize: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Supervised contrastive loss over ``V`` views of ``B`` samples (the SupContrast / CPSC-DFKD semantics).

    Args:
        features: ``[B, V, D]`` embeddings; in CPSC-DFKD view 0 is the student's and view 1 the teacher's embedding
            of the same synthetic image.
        labels: ``[B]`` integer classes (the generator's condition labels); positives share a label. ``None`` is the
            SimCLR case: the positives of a sample are its other views.
        temperature, base_temperature: the loss is ``-(T / T_base) * mean log-probability of the positives``.
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"`` (only view 0 is).
        normalize: L2-normalise the features first (fused into the kernel on the fused backend).
        backend: ``"auto"``, ``"fused"`` or ``"reference"`` (default: :func:`dfkd_fast.get_backend`).

    Returns:
        The scalar loss, in float32 (float64 for float64 features). Anchors without positives count as 0.
    """
    fn = "supcon_loss"
    _checks.tensor(fn, "features", features, ndim=3, dtypes=_checks.FLOAT_DTYPES)
    batch, _, dim = features.shape
    if batch == 0 or features.shape[1] == 0 or dim == 0:
        raise ValueError(f"{fn}: argument 'features' must be non-empty [B, V, D], got shape {tuple(features.shape)}")
    if labels is not None:
        _checks.labels(fn, "labels", labels, batch)
        _checks.same_device(fn, "features", features, labels=labels)
    _check_temperatures(fn, temperature, base_temperature)
    _checks.choice(fn, "contrast_mode", contrast_mode, ("all", "one"))
    _checks.finite(fn, "features", features)
    anchors, anchor_labels, contrast, contrast_labels = flatten_views(features, labels, contrast_mode)
    return _dispatch(fn, anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature, 0,
                     normalize, backend)


def supcon_loss_pairs(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    self_offset: int | None = None,
    normalize: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Supervised contrastive loss of ``anchors [N, D]`` against a contrast set ``contrast [M, D]``.

    The general form behind :func:`supcon_loss`, and what multi-GPU training needs (local anchors against the
    all-gathered contrast set). ``self_offset``: anchor ``i`` is contrast row ``self_offset + i`` and that self-pair is
    excluded; ``None`` when the anchors are not in the contrast set. The loss is the mean over the ``N`` anchors.
    """
    fn = "supcon_loss_pairs"
    _checks.tensor(fn, "anchors", anchors, ndim=2, dtypes=_checks.FLOAT_DTYPES)
    _checks.tensor(fn, "contrast", contrast, ndim=2, dtypes=_checks.FLOAT_DTYPES)
    if anchors.shape[0] == 0 or anchors.shape[1] == 0:
        raise ValueError(f"{fn}: argument 'anchors' must be a non-empty [N, D] tensor, got {tuple(anchors.shape)}")
    if contrast.shape[1] != anchors.shape[1]:
        raise ValueError(
            f"{fn}: argument 'contrast' must have D = {anchors.shape[1]} columns like 'anchors', "
            f"got shape {tuple(contrast.shape)}"
        )
    if contrast.dtype != anchors.dtype:
        raise TypeError(f"{fn}: argument 'contrast' must have the dtype of 'anchors' ({anchors.dtype}), got {contrast.dtype}")
    _checks.labels(fn, "anchor_labels", anchor_labels, anchors.shape[0])
    _checks.labels(fn, "contrast_labels", contrast_labels, contrast.shape[0])
    _checks.same_device(
        fn, "anchors", anchors, contrast=contrast, anchor_labels=anchor_labels, contrast_labels=contrast_labels
    )
    if self_offset is not None:
        _checks.integer(fn, "self_offset", self_offset, low=0, high=contrast.shape[0] - anchors.shape[0])
    _check_temperatures(fn, temperature, base_temperature)
    _checks.finite(fn, "anchors", anchors)
    _checks.finite(fn, "contrast", contrast)
    return _dispatch(fn, anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature,
                     self_offset, normalize, backend)


def _check_temperatures(fn: str, temperature: float, base_temperature: float) -> None:
    _checks.positive(fn, "temperature", temperature)
    _checks.positive(fn, "base_temperature", base_temperature)
