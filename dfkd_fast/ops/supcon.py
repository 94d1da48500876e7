"""supcon_loss: the pseudo-supervised contrastive loss of CPSC-DFKD (SupCon semantics).

Custom ops ``dfkd_fast::supcon_fwd`` (loss, per-anchor log-sum-exp and positive count) and ``dfkd_fast::supcon_bwd``
(gradients, recomputed from the inputs and those O(N) statistics), their fake kernels and autograd formula, and the
validated functional API. The ops run the tiled Triton kernels of :mod:`dfkd_fast.kernels.supcon`, which never
materialise an N x M matrix; the maths is in :mod:`dfkd_fast.reference.supcon`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfkd_fast import _checks
from dfkd_fast._backend import use_fused
from dfkd_fast.ops import _autograd
from dfkd_fast.reference._common import compute_dtype
from dfkd_fast.reference.supcon import flatten_views, supcon_loss_pairs_reference

NO_SELF = -1  # self_offset value meaning "the anchors are not part of the contrast set"


def _kernels():
    # Imported on first use: `import dfkd_fast` must not import triton.
    from dfkd_fast.kernels import supcon

    return supcon


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
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, lse[N], num_pos[N] int32): the loss and LSE in the compute dtype; ``scale`` = T / T_base.

    ``lse`` and ``num_pos`` (each anchor's log-sum-exp over its contrast set and number of positives) are the O(N)
    statistics the backward needs besides the inputs.
    """
    return _kernels().supcon_forward(
        anchors, anchor_labels, contrast, contrast_labels, inv_temperature, scale, self_offset, normalize
    )


@supcon_fwd.register_fake
def _(anchors, anchor_labels, contrast, contrast_labels, inv_temperature, scale, self_offset, normalize):
    acc = compute_dtype(anchors.dtype)
    n = anchors.shape[0]
    return anchors.new_empty((), dtype=acc), anchors.new_empty(n, dtype=acc), anchors.new_empty(n, dtype=torch.int32)


@torch.library.custom_op("dfkd_fast::supcon_bwd", mutates_args=())
def supcon_bwd(
    grad_loss: Tensor,
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    lse: Tensor,
    num_pos: Tensor,
    inv_temperature: float,
    scale: float,
    self_offset: int,
    normalize: bool,
) -> tuple[Tensor, Tensor]:
    """(d_anchors, d_contrast) in the input dtypes, recomputed tile by tile from the inputs and (lse, num_pos)."""
    return _kernels().supcon_backward(
        grad_loss, anchors, anchor_labels, contrast, contrast_labels, lse, num_pos, inv_temperature, scale,
        self_offset, normalize,
    )


@supcon_bwd.register_fake
def _(grad_loss, anchors, anchor_labels, contrast, contrast_labels, lse, num_pos, inv_temperature, scale,
      self_offset, normalize):
    return anchors.new_empty(anchors.shape), contrast.new_empty(contrast.shape)


def _setup_context(ctx, inputs, output):
    anchors, anchor_labels, contrast, contrast_labels, *params = inputs
    _, lse, num_pos = output
    ctx.save_for_backward(anchors, anchor_labels, contrast, contrast_labels, lse, num_pos)
    ctx.params = params
    ctx.mark_non_differentiable(lse, num_pos)


def _backward(ctx, grad_loss, _grad_lse, _grad_num_pos):
    d_anchors, d_contrast = _apply_bwd(grad_loss, *ctx.saved_tensors, *ctx.params)
    return d_anchors, None, d_contrast, None, None, None, None, None


def _setup_bwd(ctx, inputs, output):
    grad_loss, anchors, anchor_labels, contrast, contrast_labels, _lse, _num_pos, *params = inputs
    ctx.save_for_backward(grad_loss, anchors, anchor_labels, contrast, contrast_labels)
    ctx.params = params


def _double_backward(ctx, grad_d_anchors, grad_d_contrast):
    grad_loss, anchors, anchor_labels, contrast, contrast_labels = ctx.saved_tensors
    inv_temperature, scale, self_offset, normalize = ctx.params
    temperature = 1.0 / inv_temperature

    def reference(a, c):
        return supcon_loss_pairs_reference(a, anchor_labels, c, contrast_labels, temperature, temperature / scale,
                                           None if self_offset == NO_SELF else self_offset, normalize)

    gg, ga, gc = _autograd.reference_double_backward(reference, grad_loss, (anchors, contrast),
                                                     (grad_d_anchors, grad_d_contrast))
    return gg, ga, None, gc, None, None, None, None, None, None, None


_apply_fwd = _autograd.register(supcon_fwd, _setup_context, _backward)
_apply_bwd = _autograd.register(supcon_bwd, _setup_bwd, _double_backward)


def _dispatch(fn, anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature, self_offset,
              normalize, backend) -> Tensor:
    if use_fused(fn, backend, anchors.device, "triton"):
        loss, _, _ = _apply_fwd(
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
        temperature, base_temperature: the loss is ``-(T / T_base) * mean log-probability of the positives``;
            ``1 / T`` and ``T / T_base`` must be finite normal numbers of the compute dtype.
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
    _check_temperatures(fn, temperature, base_temperature, features.dtype)
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
        raise TypeError(f"{fn}: argument 'contrast' must have the dtype of 'anchors' ({anchors.dtype}), "
                        f"got {contrast.dtype}")
    _checks.labels(fn, "anchor_labels", anchor_labels, anchors.shape[0])
    _checks.labels(fn, "contrast_labels", contrast_labels, contrast.shape[0])
    _checks.same_device(
        fn, "anchors", anchors, contrast=contrast, anchor_labels=anchor_labels, contrast_labels=contrast_labels
    )
    if self_offset is not None:
        _checks.integer(fn, "self_offset", self_offset, low=0, high=contrast.shape[0] - anchors.shape[0])
    _check_temperatures(fn, temperature, base_temperature, anchors.dtype)
    _checks.finite(fn, "anchors", anchors)
    _checks.finite(fn, "contrast", contrast)
    return _dispatch(fn, anchors, anchor_labels, contrast, contrast_labels, temperature, base_temperature,
                     self_offset, normalize, backend)


def _check_temperatures(fn: str, temperature: float, base_temperature: float, dtype: torch.dtype) -> None:
    _checks.positive(fn, "temperature", temperature)
    _checks.positive(fn, "base_temperature", base_temperature)
    # 1/T scales the logits and T/T_base the loss, both as numbers of the compute dtype: neither may overflow it
    acc = compute_dtype(dtype)
    limit = torch.finfo(acc)
    if 1.0 / temperature > limit.max:
        raise ValueError(f"{fn}: argument 'temperature' must be >= {1.0 / limit.max:.4g} for {dtype} features (its "
                         f"reciprocal must be a finite {acc}), got {temperature}")
    if not limit.tiny <= temperature / base_temperature <= limit.max:
        raise ValueError(f"{fn}: arguments 'temperature' / 'base_temperature' must be a normal {acc} number "
                         f"(in [{limit.tiny:.4g}, {limit.max:.4g}]), got {temperature} / {base_temperature}")
