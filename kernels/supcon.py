"""Tiled supervised-contrastive loss (SupCon) in Triton: forward and backward without any N x M matrix.

Anchors ``a_i`` (N rows) with labels ``y_i`` meet a contrast set ``c_j`` (M rows) with labels ``t_j``. With
``x_hat = x / max(|x|, eps)`` when normalising (``x_hat = x`` otherwise), the logits are

    z_ij = a_hat_i . c_hat_j / T,         j in V(i) = {j : j != i + self_offset},   P(i) = {j in V(i) : t_j = y_i}
    L_i  = (T / T_base) * ( LSE_{j in V(i)} z_ij  -  (1/|P(i)|) sum_{p in P(i)} z_ip )     (0 when P(i) is empty)
    L    = (1/N) sum_i L_i

(Khosla et al., NeurIPS 2020, with the SupContrast convention for anchors without positives.)

Forward (``_supcon_fwd_kernel``): one program per block of anchors streams the contrast rows in tiles, keeping an
online (max, sum-exp) pair in base 2 (``exp2`` with log2(e) folded into 1/T) and the masked positive sum and count
in the same pass: the positive term is linear in the logits, so it needs no second pass. Writes LSE_i, |P(i)| and
L_i; nothing of size N x M exists anywhere.

Backward (``_supcon_bwd_kernel``): with ``w_i = g (T/T_base) / N [|P(i)| > 0]`` and ``p_ij = exp(z_ij - LSE_i)``,

    dL/dz_ij = w_i (p_ij - [j in P(i)] / |P(i)|)        (0 outside V(i))
    dL/da_hat_i = (1/T) sum_j dL/dz_ij c_hat_j          dL/dc_hat_j = (1/T) sum_i dL/dz_ij a_hat_i

recomputed tile by tile from the inputs and the saved (LSE, |P|). As in Inf-CL (arXiv 2410.17243), the row sums
(anchor gradients) and the column sums (contrast gradients) are computed by separate programs of one launch, each
owning its output rows, so no atomics are needed and the result is deterministic. When normalising, the gradient
w.r.t. ``x_hat`` is mapped to ``x`` by ``(I - x_hat x_hat^T) / |x|`` in an O(N.D) epilogue (``_normalize_bwd_kernel``).

Accumulation is fp32 (fp64 for fp64 inputs, so that gradcheck works); fp16/bf16 inputs feed the tensor cores on a
GPU. Under the Triton interpreter (CPU tests) dot operands are upcast to fp32, since bf16 ``tl.dot`` is wrong there.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
NORM_EPS = 1e-12  # F.normalize's eps

_LN2 = tl.constexpr(LN2)
_LOG2E = tl.constexpr(LOG2E)
_NORM_EPS = tl.constexpr(NORM_EPS)


@triton.jit
def _load_rows(ptr, rows, row_ok, k, D, stride, DOT: tl.constexpr):
    """[len(rows), len(k)] tile of a row-major [*, D] matrix, zero-padded, cast to the dot dtype."""
    offs = rows.to(tl.int64)[:, None] * stride + k[None, :]
    return tl.load(ptr + offs, mask=row_ok[:, None] & (k[None, :] < D), other=0.0).to(DOT)


@triton.jit
def _logits_tile(
    x_first,  # [BLOCK_X, BLOCK_K] DOT: first K-chunk of the owned rows (loaded once per program)
    x_scale,  # [BLOCK_X] ACC: log2(e)/T, times 1/|x| when normalising
    x_idx, x_lab, x_ok,  # [BLOCK_X] owned row indices, labels, in-bounds flags
    x_ptr,  # [*, D] the owned rows' matrix (re-read in chunks only when D > BLOCK_K)
    y_ptr, y_lab_ptr, y_rnorm_ptr,  # [n_y, D], [n_y], [n_y]: the streamed side
    start, n_y, D, stride_x, stride_y, self_offset,
    X_IS_ANCHOR: tl.constexpr, BLOCK_Y: tl.constexpr, BLOCK_K: tl.constexpr, MULTI_K: tl.constexpr,
    NORMALIZE: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """One [BLOCK_X, BLOCK_Y] tile of base-2 logits between the owned rows and streamed rows start..start+BLOCK_Y.

    Returns (logits, pair in V(i), pair is a positive, y indices, y in bounds, first K-chunk of y, 1/|y|).
    Loads are written out here rather than through helpers: the interpreter pays milliseconds per helper call.
    """
    y_idx = start + tl.arange(0, BLOCK_Y)
    y_ok = y_idx < n_y
    k = tl.arange(0, BLOCK_K)
    y_first = tl.load(y_ptr + y_idx.to(tl.int64)[:, None] * stride_y + k[None, :],
                      mask=y_ok[:, None] & (k[None, :] < D), other=0.0).to(DOT)
    s = tl.dot(x_first, tl.trans(y_first), out_dtype=ACC, input_precision=PRECISION)
    if MULTI_K:
        for k0 in range(BLOCK_K, D, BLOCK_K):
            kk = k0 + k
            x = tl.load(x_ptr + x_idx.to(tl.int64)[:, None] * stride_x + kk[None, :],
                        mask=x_ok[:, None] & (kk[None, :] < D), other=0.0).to(DOT)
            y = tl.load(y_ptr + y_idx.to(tl.int64)[:, None] * stride_y + kk[None, :],
                        mask=y_ok[:, None] & (kk[None, :] < D), other=0.0).to(DOT)
            s = tl.dot(x, tl.trans(y), s, out_dtype=ACC, input_precision=PRECISION)
    s *= x_scale[:, None]
    y_rn = tl.full((BLOCK_Y,), 1.0, ACC)
    if NORMALIZE:
        y_rn = tl.load(y_rnorm_ptr + y_idx, mask=y_ok, other=0.0)
        s *= y_rn[None, :]
    y_lab = tl.load(y_lab_ptr + y_idx, mask=y_ok, other=0)
    # The self pair: contrast row == anchor row + self_offset (self_offset = -1: there is none).
    if X_IS_ANCHOR:
        not_self = y_idx[None, :] != tl.where(self_offset >= 0, x_idx + self_offset, -1)[:, None]
    else:
        not_self = x_idx[:, None] != tl.where(self_offset >= 0, y_idx + self_offset, -1)[None, :]
    valid = x_ok[:, None] & y_ok[None, :] & not_self
    pos = valid & (x_lab[:, None] == y_lab[None, :])
    return s, valid, pos, y_idx, y_ok, y_first, y_rn


@triton.jit
def _supcon_fwd_kernel(
    row_loss_ptr,  # [N] ACC: L_i
    lse_ptr,  # [N] ACC: LSE_i (natural log; -inf for an anchor with nothing to contrast)
    num_pos_ptr,  # [N] int32: |P(i)|
    a_ptr,  # [N, D] anchors, row stride stride_a
    a_lab_ptr,  # [N] int anchor labels
    a_rnorm_ptr,  # [N] ACC: 1 / max(|a_i|, eps) (read only when NORMALIZE)
    c_ptr,  # [M, D] contrast rows, row stride stride_c
    c_lab_ptr,  # [M] int contrast labels
    c_rnorm_ptr,  # [M] ACC: 1 / max(|c_j|, eps) (read only when NORMALIZE)
    stride_a, stride_c, N, M, D,
    logit_scale: "fp64",  # log2(e) / T: logits in base 2
    loss_scale: "fp64",  # ln(2) T / T_base: base-2 logits back to the loss
    self_offset,  # anchor i is contrast row i + self_offset; -1: the anchors are not in the contrast set
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MULTI_K: tl.constexpr,
    NORMALIZE: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # int32 indices; int64 only in the offsets
    row_ok = rows < N
    a_first = _load_rows(a_ptr, rows, row_ok, tl.arange(0, BLOCK_K), D, stride_a, DOT)
    a_lab = tl.load(a_lab_ptr + rows, mask=row_ok, other=0)
    row_scale = tl.full((BLOCK_M,), logit_scale, ACC)
    if NORMALIZE:
        row_scale *= tl.load(a_rnorm_ptr + rows, mask=row_ok, other=0.0)

    m = tl.full((BLOCK_M,), float("-inf"), ACC)  # running max of the base-2 logits
    l = tl.zeros((BLOCK_M,), ACC)  # running sum of exp2(logit - m)
    pos_sum = tl.zeros((BLOCK_M,), ACC)  # sum of the base-2 logits of the positives
    pos_cnt = tl.zeros((BLOCK_M,), ACC)  # a float count stays in the logits' register layout
    for start in range(0, M, BLOCK_N):
        s, valid, pos, _, _, _, _ = _logits_tile(
            a_first, row_scale, rows, a_lab, row_ok, a_ptr, c_ptr, c_lab_ptr, c_rnorm_ptr,
            start, M, D, stride_a, stride_c, self_offset,
            True, BLOCK_N, BLOCK_K, MULTI_K, NORMALIZE, DOT, ACC, PRECISION,
        )
        # One reduction for both: a separate count reduction lands in another register layout on sm_90 and
        # more than doubles the register use (spills).
        is_pos = tl.where(pos, 1.0, 0.0).to(ACC)
        tile_sum, tile_cnt = tl.split(tl.sum(tl.join(is_pos * s, is_pos), 1))
        pos_sum += tile_sum
        pos_cnt += tile_cnt
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        # A tile with no valid column leaves m at -inf: shift by 0 instead, so that no -inf - -inf appears.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        l = l * tl.exp2(m - shift) + tl.sum(tl.exp2(s - shift[:, None]), 1)
        m = m_new

    lse2 = m + tl.log2(tl.where(l > 0, l, 1.0))  # l = 0 only where m = -inf: nothing to contrast
    mean_pos = pos_sum / tl.maximum(pos_cnt, 1.0)
    row_loss = tl.where(pos_cnt > 0, tl.full((), loss_scale, ACC) * (lse2 - mean_pos), 0.0)
    tl.store(row_loss_ptr + rows, row_loss, mask=row_ok)
    tl.store(lse_ptr + rows, lse2 * _LN2, mask=row_ok)
    tl.store(num_pos_ptr + rows, pos_cnt.to(tl.int32), mask=row_ok)


@triton.jit
def _anchor_stats(lse_ptr, num_pos_ptr, rows, row_ok, dz_scale, ACC: tl.constexpr):
    """Per-anchor (LSE_i in base 2, dz_scale [|P(i)| > 0], 1/|P(i)|) for the backward."""
    lse2 = tl.load(lse_ptr + rows, mask=row_ok, other=0.0).to(ACC) * _LOG2E
    n_pos = tl.load(num_pos_ptr + rows, mask=row_ok, other=0)
    weight = tl.where(n_pos > 0, dz_scale, 0.0)
    inv_pos = tl.where(n_pos > 0, 1.0 / tl.maximum(n_pos, 1).to(ACC), 0.0)
    return lse2, weight, inv_pos


@triton.jit
def _supcon_bwd_kernel(
    da_ptr,  # [N, D] dL/da (or dL/da_hat in ACC when NORMALIZE), row stride stride_da
    dc_ptr,  # [M, D] dL/dc (or dL/dc_hat in ACC when NORMALIZE), row stride stride_dc
    grad_ptr,  # [] upstream gradient of the loss
    lse_ptr,  # [N] ACC: LSE_i from the forward
    num_pos_ptr,  # [N] int32: |P(i)| from the forward
    a_ptr, a_lab_ptr, a_rnorm_ptr,  # [N, D], [N], [N] as in the forward
    c_ptr, c_lab_ptr, c_rnorm_ptr,  # [M, D], [M], [M] as in the forward
    stride_a, stride_c, stride_da, stride_dc, N, M, D,
    logit_scale: "fp64",  # log2(e) / T
    grad_scale: "fp64",  # 1 / (T_base N dz_scale): from the scaled dot operand to dL/dx_hat
    dz_scale: "fp64",  # power of two that keeps the dot operand dL/dz in the normal range of fp16
    self_offset,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MULTI_K: tl.constexpr,
    NORMALIZE: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Programs [0, cdiv(N, BLOCK_M) * n_chunks) own anchor rows (dL/da), the rest own contrast rows (dL/dc).

    Each program owns BLOCK_M rows and one BLOCK_K-wide chunk of D of its output, and streams the other side in
    tiles of BLOCK_N rows. When D <= BLOCK_K the streamed tile loaded for the logits also feeds the gradient dot.
    dL/dz = w (p - [positive] / |P|) on valid pairs; p is masked before exp2 because an anchor with nothing to
    contrast has LSE = -inf (and a positive pair is always valid). The weight w_i = g (T/T_base) / N [|P(i)| > 0]
    is applied to the accumulator, not to the dot operand, which is also scaled by ``dz_scale``: with fp16 inputs
    the terms p ~ 1/M would otherwise fall below fp16's normal range (6e-5) and lose their precision. For the same
    reason the normalisation goes into the other operand (x_hat = x / |x|, always of unit norm).
    """
    pid = tl.program_id(0)  # int32 indices; int64 only in the offsets
    n_chunks = tl.cdiv(D, BLOCK_K)
    row_programs = tl.cdiv(N, BLOCK_M) * n_chunks
    grad = tl.load(grad_ptr).to(ACC) * tl.full((), grad_scale, ACC)
    dz_scale = tl.full((), dz_scale, ACC)
    if pid < row_programs:
        # dL/da_hat_i = (1/T) sum_j dz_ij c_hat_j: own anchors, stream the contrast rows.
        rows = (pid // n_chunks) * BLOCK_M + tl.arange(0, BLOCK_M)
        kd = (pid % n_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        row_ok = rows < N
        a_first = _load_rows(a_ptr, rows, row_ok, tl.arange(0, BLOCK_K), D, stride_a, DOT)
        a_lab = tl.load(a_lab_ptr + rows, mask=row_ok, other=0)
        lse2, weight, inv_pos = _anchor_stats(lse_ptr, num_pos_ptr, rows, row_ok, dz_scale, ACC)
        row_scale = tl.full((BLOCK_M,), logit_scale, ACC)
        if NORMALIZE:
            row_scale *= tl.load(a_rnorm_ptr + rows, mask=row_ok, other=0.0)
        acc = tl.zeros((BLOCK_M, BLOCK_K), ACC)
        for start in range(0, M, BLOCK_N):
            s, valid, pos, cols, col_ok, c_tile, c_rn = _logits_tile(
                a_first, row_scale, rows, a_lab, row_ok, a_ptr, c_ptr, c_lab_ptr, c_rnorm_ptr,
                start, M, D, stride_a, stride_c, self_offset,
                True, BLOCK_N, BLOCK_K, MULTI_K, NORMALIZE, DOT, ACC, PRECISION,
            )
            p = tl.exp2(tl.where(valid, s - lse2[:, None], float("-inf")))
            dz = weight[:, None] * (p - tl.where(pos, inv_pos[:, None], 0.0))
            if MULTI_K:
                c_tile = _load_rows(c_ptr, cols, col_ok, kd, D, stride_c, DOT)
            if NORMALIZE:
                c_tile = (c_tile.to(ACC) * c_rn[:, None]).to(DOT)
            acc = tl.dot(dz.to(DOT), c_tile, acc, out_dtype=ACC, input_precision=PRECISION)
        acc *= grad
        offs = rows.to(tl.int64)[:, None] * stride_da + kd[None, :]
        tl.store(da_ptr + offs, acc.to(da_ptr.dtype.element_ty), mask=row_ok[:, None] & (kd[None, :] < D))
    else:
        # dL/dc_hat_j = (1/T) sum_i dz_ij a_hat_i: own contrast rows, stream the anchors (tiles are z transposed).
        prog = pid - row_programs
        cols = (prog // n_chunks) * BLOCK_M + tl.arange(0, BLOCK_M)
        kd = (prog % n_chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
        col_ok = cols < M
        c_first = _load_rows(c_ptr, cols, col_ok, tl.arange(0, BLOCK_K), D, stride_c, DOT)
        c_lab = tl.load(c_lab_ptr + cols, mask=col_ok, other=0)
        col_scale = tl.full((BLOCK_M,), logit_scale, ACC)
        if NORMALIZE:
            col_scale *= tl.load(c_rnorm_ptr + cols, mask=col_ok, other=0.0)
        acc = tl.zeros((BLOCK_M, BLOCK_K), ACC)
        for start in range(0, N, BLOCK_N):
            s, valid, pos, rows, row_ok, a_tile, a_rn = _logits_tile(
                c_first, col_scale, cols, c_lab, col_ok, c_ptr, a_ptr, a_lab_ptr, a_rnorm_ptr,
                start, N, D, stride_c, stride_a, self_offset,
                False, BLOCK_N, BLOCK_K, MULTI_K, NORMALIZE, DOT, ACC, PRECISION,
            )
            lse2, weight, inv_pos = _anchor_stats(lse_ptr, num_pos_ptr, rows, row_ok, dz_scale, ACC)
            p = tl.exp2(tl.where(valid, s - lse2[None, :], float("-inf")))
            dz = weight[None, :] * (p - tl.where(pos, inv_pos[None, :], 0.0))
            if MULTI_K:
                a_tile = _load_rows(a_ptr, rows, row_ok, kd, D, stride_a, DOT)
            if NORMALIZE:
                a_tile = (a_tile.to(ACC) * a_rn[:, None]).to(DOT)
            acc = tl.dot(dz.to(DOT), a_tile, acc, out_dtype=ACC, input_precision=PRECISION)
        acc *= grad
        offs = cols.to(tl.int64)[:, None] * stride_dc + kd[None, :]
        tl.store(dc_ptr + offs, acc.to(dc_ptr.dtype.element_ty), mask=col_ok[:, None] & (kd[None, :] < D))


@triton.jit
def _inv_norm_kernel(
    rnorm_ptr,  # [R] ACC: 1 / max(|x_r|, eps)
    x_ptr,  # [R, D], row stride stride_x
    stride_x, R, D,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    sq = tl.zeros((BLOCK_R,), ACC)
    for k0 in range(0, D, BLOCK_K):
        x = _load_rows(x_ptr, rows, row_ok, k0 + tl.arange(0, BLOCK_K), D, stride_x, ACC)
        sq += tl.sum(x * x, 1)
    tl.store(rnorm_ptr + rows, 1.0 / tl.maximum(tl.sqrt(sq), _NORM_EPS), mask=row_ok)


@triton.jit
def _normalize_bwd_kernel(
    dx_ptr,  # [R, D] out: dL/dx, row stride stride_dx
    g_ptr,  # [R, D] ACC: dL/dx_hat, row stride stride_g
    x_ptr,  # [R, D], row stride stride_x
    rnorm_ptr,  # [R] ACC: 1 / max(|x_r|, eps)
    stride_dx, stride_g, stride_x, R, D,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """dL/dx = (g - x_hat (x_hat . g)) / |x|; below eps F.normalize divides by eps, a constant: no projection."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    k = tl.arange(0, BLOCK_D)
    rn = tl.load(rnorm_ptr + rows, mask=row_ok, other=0.0)
    x_hat = _load_rows(x_ptr, rows, row_ok, k, D, stride_x, ACC) * rn[:, None]
    g = _load_rows(g_ptr, rows, row_ok, k, D, stride_g, ACC)
    along = tl.where(rn < 1.0 / _NORM_EPS, tl.sum(x_hat * g, 1), 0.0)
    dx = (g - x_hat * along[:, None]) * rn[:, None]
    offs = rows.to(tl.int64)[:, None] * stride_dx + k[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & (k[None, :] < D))


# --------------------------------------------------------------------------------------------------------------
# Launchers


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


@functools.lru_cache(maxsize=None)
def _configs(dtype: torch.dtype, d: int, interp_block: int, precision: str) -> tuple[dict, dict]:
    """(forward, backward) constexprs and launch options; ``interp_block`` > 0 means the Triton interpreter."""
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    d_pad = max(16, triton.next_power_of_2(d))
    if interp_block:
        # The interpreter pays per tile op, not per element: about 4 tiles per side whatever the size, which still
        # exercises ragged edges, and two K chunks at D = 128. bf16 tl.dot is wrong in the interpreter: fp32 dots.
        common = dict(BLOCK_M=interp_block, BLOCK_N=interp_block, BLOCK_K=min(d_pad, 64), DOT=acc)
        fwd, bwd = dict(common), dict(common)
    else:
        # Chosen for H100 (sm_90) from ptxas register/spill and shared-memory reports, none measured on a GPU:
        # no spills, D <= 128 in one K chunk (the owned block is loaded once per program, like flash-attention's
        # Q), wider D in 128-wide (2-byte) or 64-wide (4-byte) chunks.
        dot = _TL_DTYPE[dtype]
        if dtype == torch.float64:
            fwd = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=min(d_pad, 64), num_warps=4, num_stages=1)
            bwd = dict(fwd)
        elif dtype in (torch.float16, torch.bfloat16):
            block_k = min(d_pad, 128)
            fwd = dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=block_k, num_warps=8, num_stages=3)
            bwd = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=block_k, num_warps=8, num_stages=2)
        elif d_pad <= 128:
            fwd = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=d_pad, num_warps=8, num_stages=2)
            bwd = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=d_pad, num_warps=8, num_stages=2)
        else:
            fwd = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=2)
            bwd = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=2)
        if dtype == torch.float32 and precision == "ieee":
            # Full-fp32 dots run on the FMA units with both operands in registers: narrow K chunks in the forward
            # (its K chunk is not an output chunk); the backward configurations above do not spill.
            fwd = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=min(d_pad, 32), num_warps=4, num_stages=2)
        fwd["DOT"] = bwd["DOT"] = dot
    for cfg in (fwd, bwd):
        cfg.update(MULTI_K=d > cfg["BLOCK_K"], ACC=acc, PRECISION=precision)
    return fwd, bwd


def _config(x: torch.Tensor, n: int, m: int, d: int) -> tuple[dict, dict]:
    interp_block = min(256, max(16, triton.next_power_of_2(triton.cdiv(max(n, m), 4)))) if _interpreting() else 0
    precision = "ieee"
    if x.dtype == torch.float32 and not interp_block:
        # Follow torch's matmul setting: TF32 tensor cores unless full fp32 is asked for (torch's default).
        precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return _configs(x.dtype, d, interp_block, precision)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x with unit column stride (the kernels take a row stride)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _device_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _inv_norms(x: torch.Tensor) -> torch.Tensor:
    rows, dim = x.shape
    out = torch.empty(rows, dtype=_acc_dtype(x), device=x.device)
    block_r = 32
    _inv_norm_kernel[(triton.cdiv(rows, block_r),)](
        out, x, x.stride(0), rows, dim,
        BLOCK_R=block_r, BLOCK_K=min(128, max(16, triton.next_power_of_2(dim))), ACC=_TL_DTYPE[out.dtype],
    )
    return out


def _same_rows(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether x and y view the same memory the same way (metadata only: no device sync)."""
    return x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride() and x.dtype == y.dtype


def _norms(anchors: torch.Tensor, contrast: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(1/|a|, 1/|c|) when normalising; otherwise any tensors (the kernels do not read them)."""
    if not normalize:
        return anchors, contrast
    c_rn = _inv_norms(contrast)
    return (c_rn if _same_rows(anchors, contrast) else _inv_norms(anchors)), c_rn


def supcon_forward(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor,
    contrast_labels: torch.Tensor,
    inv_temperature: float,
    scale: float,
    self_offset: int,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [], LSE [N], |P| [N] int32); loss and LSE in fp32 (fp64 for fp64 inputs). self_offset -1 = none."""
    anchors, contrast = _rows(anchors), _rows(contrast)
    anchor_labels, contrast_labels = anchor_labels.contiguous(), contrast_labels.contiguous()
    n, d = anchors.shape
    m = contrast.shape[0]
    fwd, _ = _config(anchors, n, m, d)
    row_loss = torch.empty(n, dtype=_acc_dtype(anchors), device=anchors.device)
    lse = torch.empty_like(row_loss)
    num_pos = torch.empty(n, dtype=torch.int32, device=anchors.device)
    with _device_guard(anchors):
        a_rn, c_rn = _norms(anchors, contrast, normalize)
        _supcon_fwd_kernel[(triton.cdiv(n, fwd["BLOCK_M"]),)](
            row_loss, lse, num_pos, anchors, anchor_labels, a_rn, contrast, contrast_labels, c_rn,
            anchors.stride(0), contrast.stride(0), n, m, d, LOG2E * inv_temperature, LN2 * scale, self_offset,
            NORMALIZE=normalize, **fwd,
        )
    return row_loss.mean(), lse, num_pos


def supcon_backward(
    grad_loss: torch.Tensor,
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor,
    contrast_labels: torch.Tensor,
    lse: torch.Tensor,
    num_pos: torch.Tensor,
    inv_temperature: float,
    scale: float,
    self_offset: int,
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/d anchors, dL/d contrast) in the input dtypes, from the inputs and the forward's (LSE, |P|)."""
    anchors, contrast = _rows(anchors), _rows(contrast)
    anchor_labels, contrast_labels = anchor_labels.contiguous(), contrast_labels.contiguous()
    n, d = anchors.shape
    m = contrast.shape[0]
    _, bwd = _config(anchors, n, m, d)
    # Without normalisation the kernel writes the final gradients; with it, dL/dx_hat in ACC for the epilogue.
    out_dtype = _acc_dtype(anchors) if normalize else anchors.dtype
    da = torch.empty(n, d, dtype=out_dtype, device=anchors.device)
    dc = torch.empty(m, d, dtype=out_dtype, device=anchors.device)
    # fp16 only: p ~ 1/max(N, M) scaled towards 1, the largest |dL/dz| (1) staying under 2^14 < 65504.
    dz_scale = 2.0 ** min(14, max(0, max(n, m).bit_length() - 2)) if anchors.dtype == torch.float16 else 1.0
    with _device_guard(anchors):
        a_rn, c_rn = _norms(anchors, contrast, normalize)
        block_m, n_chunks = bwd["BLOCK_M"], triton.cdiv(d, bwd["BLOCK_K"])
        grid = ((triton.cdiv(n, block_m) + triton.cdiv(m, block_m)) * n_chunks,)
        _supcon_bwd_kernel[grid](
            da, dc, grad_loss, lse, num_pos, anchors, anchor_labels, a_rn, contrast, contrast_labels, c_rn,
            anchors.stride(0), contrast.stride(0), da.stride(0), dc.stride(0), n, m, d,
            LOG2E * inv_temperature, scale * inv_temperature / (n * dz_scale), dz_scale, self_offset,
            NORMALIZE=normalize, **bwd,
        )
        if normalize:
            da = _normalize_bwd(da, anchors, a_rn)
            dc = _normalize_bwd(dc, contrast, c_rn)
    return da, dc


def _normalize_bwd(g: torch.Tensor, x: torch.Tensor, rnorm: torch.Tensor) -> torch.Tensor:
    rows, dim = x.shape
    dx = torch.empty(rows, dim, dtype=x.dtype, device=x.device)
    block_d = max(16, triton.next_power_of_2(dim))
    block_r = max(1, min(64, 4096 // block_d))
    _normalize_bwd_kernel[(triton.cdiv(rows, block_r),)](
        dx, g, x, rnorm, dx.stride(0), g.stride(0), x.stride(0), rows, dim,
        BLOCK_R=block_r, BLOCK_D=block_d, ACC=_TL_DTYPE[g.dtype],
    )
    return dx
