"""Triton kernels of class-conditional batch norm (CBN) and of the batch-norm statistics loss.

Both ops view their ``[N, C, *spatial]`` activations as ``[N, C, S]`` with strides (n, c, s), so contiguous NCHW
(s stride 1) and channels_last (c stride 1) tensors are read in place. Work is cut into *units*: one sample n and one
block of BLOCK_S spatial positions, times a block of BLOCK_C channels. Everything is computed in ACC (fp32; fp64
for fp64 input, so that gradcheck works) right after each load.

Batch statistics (train-mode CBN, BN-statistics loss): two passes, no atomics, so the result is deterministic.

1. ``_stats_partial_kernel``: program p sums a fixed run of units around a shift K_c = the mean of its first tile
   (|mean_p - K_c| is of the order of std / sqrt(tile), so the shifted sums do not cancel the way E[x²]-E[x]²
   does) and writes its count n_p, mean_p and M2_p = Σ (x - mean_p)².
2. ``_stats_merge_kernel`` (one program per channel block): mean = Σ_p n_p mean_p / M and
   var = Σ_p [M2_p + n_p (mean_p - mean)²] / M, M = N·S (Chan, Golub and LeVeque's pairwise formula, over all
   partials at once). The running-statistics update of ``nn.BatchNorm2d`` (CBN, train mode) is
   ``_running_stats_kernel``, a separate op because an op with an autograd formula may not mutate its inputs.

CBN, with r_c = 1 / sqrt(var_c + eps), x̂ = (x - mean) · r and l_n the label of sample n:

    forward   y = γ[l_n, c] · x̂ + β[l_n, c]                                   (``_cbn_fwd_kernel``)
    backward  S1[n, c] = Σ_s dy,  S2[n, c] = Σ_s dy · x̂                        (``_cbn_bwd_partial_kernel``)
              dβ[k, c] = Σ_{l_n = k} S1[n, c],  dγ[k, c] = Σ_{l_n = k} S2[n, c]  (``_cbn_bwd_class_kernel``)
              A_c = Σ_k γ[k, c] dβ[k, c] / M,   B_c = Σ_k γ[k, c] dγ[k, c] / M   (``_cbn_bwd_moments_kernel``)
              dx = r_c · (γ[l_n, c] · dy - A_c - x̂ · B_c)                       (``_cbn_bwd_dx_kernel``)

A and B are the channel means of γ·dy and γ·dy·x̂ (Σ_n γ[l_n] S1[n] = Σ_k γ[k] dβ[k]); in eval mode (running
statistics) they are 0. The per-class sums visit the rows of each class in label-sorted order, one program per
class: deterministic, and O(N·C) whatever the number of classes.

BN-statistics loss L = ||mean - rm||₂ + ||var - rv||₂: the forward is the two statistics passes above (one read of
x) and ``_bn_stats_norms_kernel`` (one program over the C channels); the backward recomputes the two norms the same
way and makes one elementwise pass (``_bn_stats_bwd_kernel``):

    dx = dL · [u_mean,c / M + 2 u_var,c (x - mean_c) / M],   u = gap / ||gap||₂ (0 where the gap is 0)

Traffic: CBN forward reads x twice and writes y (3 passes), backward reads x and dy twice and writes dx (5 passes);
BN statistics reads x once forward, reads x and writes dx backward.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# Elements per [BLOCK_S, BLOCK_C] tile (tests lower it to exercise many tiles on small shapes).
MAX_TILE = 8192
# Statistics partials per channel (the merge reads them all).
MAX_PARTIALS = 128


# ----------------------------------------------------------------------------------------------------------------
# tile helpers shared by the kernels


@triton.jit
def _offsets(n, s, cols, stride_n, stride_c, stride_s):
    """Element offsets of the [BLOCK_S, BLOCK_C] tile (sample n, spatial positions s, channels cols)."""
    return n * stride_n + (s * stride_s)[:, None] + (cols * stride_c)[None, :]


@triton.jit
def _elementwise_tile(s_blocks, C, S, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """(n, s, cols, cmask, mask) of this program's tile: axis 0 = (sample, spatial block), axis 1 = channel block."""
    u = tl.program_id(0).to(tl.int64)  # int64 before any stride product: N·C·S may pass 2**31
    n = u // s_blocks
    s = (u % s_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    return n, s, cols, cmask, (s < S)[:, None] & cmask[None, :]


# ----------------------------------------------------------------------------------------------------------------
# batch statistics


@triton.jit
def _stats_partial_kernel(
    part_count_ptr,  # [P] ACC: values per channel summed by program p
    part_mean_ptr,  # [P, C] ACC
    part_m2_ptr,  # [P, C] ACC: Σ (x - mean_p)²
    x_ptr,  # [N, C, S]
    stride_xn, stride_xc, stride_xs,
    C, S, s_blocks, num_units, units_per_program,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)  # int64 before any stride product: N·C·S may pass 2**31
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    first = p * units_per_program
    last = tl.minimum(first + units_per_program, num_units)
    shift = tl.zeros([BLOCK_C], dtype=ACC)
    acc1 = tl.zeros([BLOCK_S, BLOCK_C], dtype=ACC)
    acc2 = tl.zeros([BLOCK_S, BLOCK_C], dtype=ACC)
    count = tl.zeros([], dtype=tl.int64)
    for u in range(first, last):
        n = u // s_blocks
        s = (u % s_blocks) * BLOCK_S + tl.arange(0, BLOCK_S)
        mask = (s < S)[:, None] & cmask[None, :]
        offs = _offsets(n, s, cols, stride_xn, stride_xc, stride_xs)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
        if u == first:
            shift = tl.sum(x, axis=0) / tl.sum((s < S).to(ACC), axis=0)
        d = tl.where(mask, x - shift[None, :], 0.0)
        acc1 += d
        acc2 += d * d
        count += tl.minimum(S - (u % s_blocks) * BLOCK_S, BLOCK_S)
    sum1 = tl.sum(acc1, axis=0)
    sum2 = tl.sum(acc2, axis=0)
    tl.store(part_mean_ptr + p * C + cols, shift + sum1 / count, mask=cmask)
    tl.store(part_m2_ptr + p * C + cols, sum2 - sum1 * (sum1 / count), mask=cmask)
    tl.store(part_count_ptr + p, count.to(ACC))


@triton.jit
def _stats_merge_kernel(
    mean_ptr, var_ptr,  # [C] ACC: batch mean and biased variance
    part_count_ptr, part_mean_ptr, part_m2_ptr,  # [P], [P, C], [P, C] ACC
    P, C, count,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = tl.arange(0, BLOCK_P)
    total = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        pmask = (p0 + rows) < P
        n_p = tl.load(part_count_ptr + p0 + rows, mask=pmask, other=0.0)
        offs = (p0 + rows)[:, None] * C + cols[None, :]
        m_p = tl.load(part_mean_ptr + offs, mask=pmask[:, None] & cmask[None, :], other=0.0)
        total += tl.sum(n_p[:, None] * m_p, axis=0)
    mean = total / count
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        pmask = (p0 + rows) < P
        n_p = tl.load(part_count_ptr + p0 + rows, mask=pmask, other=0.0)
        offs = (p0 + rows)[:, None] * C + cols[None, :]
        mask = pmask[:, None] & cmask[None, :]
        m_p = tl.load(part_mean_ptr + offs, mask=mask, other=0.0)
        m2_p = tl.load(part_m2_ptr + offs, mask=mask, other=0.0)
        d = m_p - mean[None, :]
        m2 += tl.sum(m2_p + n_p[:, None] * d * d, axis=0)
    tl.store(mean_ptr + cols, mean, mask=cmask)
    tl.store(var_ptr + cols, m2 / count, mask=cmask)


@triton.jit
def _bn_stats_norms_kernel(
    loss_ptr,  # [] ACC: ||mean - rm|| + ||var - rv||
    norms_ptr,  # [2] ACC: ||mean - rm||, ||var - rv||
    mean_ptr, var_ptr,  # [C] ACC
    running_mean_ptr, running_var_ptr,  # [C]
    C,
    BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    sq_mean = tl.zeros([BLOCK_C], dtype=ACC)
    sq_var = tl.zeros([BLOCK_C], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):  # one program: C values, a few blocks at most
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        gap_mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0) - tl.load(
            running_mean_ptr + cols, mask=cmask, other=0.0).to(ACC)
        gap_var = tl.load(var_ptr + cols, mask=cmask, other=0.0) - tl.load(
            running_var_ptr + cols, mask=cmask, other=0.0).to(ACC)
        sq_mean += gap_mean * gap_mean
        sq_var += gap_var * gap_var
    norm_mean = tl.sqrt(tl.sum(sq_mean, axis=0))
    norm_var = tl.sqrt(tl.sum(sq_var, axis=0))
    tl.store(norms_ptr, norm_mean)
    tl.store(norms_ptr + 1, norm_var)
    tl.store(loss_ptr, norm_mean + norm_var)


@triton.jit
def _running_stats_kernel(
    running_mean_ptr, running_var_ptr,  # [C], updated in place
    mean_ptr, var_ptr,  # [C] ACC: batch mean and biased variance
    C, count, momentum,
    BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """nn.BatchNorm2d's update r = (1 - momentum) r + momentum s, with the unbiased variance."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    var = tl.load(var_ptr + cols, mask=cmask, other=0.0) * count / (count - 1)
    rm = tl.load(running_mean_ptr + cols, mask=cmask, other=0.0).to(ACC)
    rv = tl.load(running_var_ptr + cols, mask=cmask, other=0.0).to(ACC)
    rm = (1 - momentum) * rm + momentum * mean
    rv = (1 - momentum) * rv + momentum * var
    tl.store(running_mean_ptr + cols, rm.to(running_mean_ptr.dtype.element_ty), mask=cmask)
    tl.store(running_var_ptr + cols, rv.to(running_var_ptr.dtype.element_ty), mask=cmask)


# ----------------------------------------------------------------------------------------------------------------
# class-conditional batch norm


@triton.jit
def _cbn_fwd_kernel(
    y_ptr,  # [N, C, S]
    stride_yn, stride_yc, stride_ys,
    x_ptr,  # [N, C, S]
    stride_xn, stride_xc, stride_xs,
    labels_ptr,  # [N] int64
    weight_ptr, bias_ptr,  # [K, C] contiguous: γ and β tables
    mean_ptr, var_ptr,  # [C] ACC
    eps, C, S, s_blocks,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    n, s, cols, cmask, mask = _elementwise_tile(s_blocks, C, S, BLOCK_S, BLOCK_C)
    x_offs = _offsets(n, s, cols, stride_xn, stride_xc, stride_xs)
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(ACC)
    row = tl.load(labels_ptr + n) * C
    gamma = tl.load(weight_ptr + row + cols, mask=cmask, other=0.0).to(ACC)
    beta = tl.load(bias_ptr + row + cols, mask=cmask, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    scale = gamma / tl.sqrt(tl.load(var_ptr + cols, mask=cmask, other=1.0) + eps)
    y = (x - mean[None, :]) * scale[None, :] + beta[None, :]
    y_offs = _offsets(n, s, cols, stride_yn, stride_yc, stride_ys)
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cbn_bwd_partial_kernel(
    s1_ptr, s2_ptr,  # [N, C] ACC: Σ_s dy and Σ_s dy·x̂
    dy_ptr,  # [N, C, S]
    stride_dyn, stride_dyc, stride_dys,
    x_ptr,  # [N, C, S]
    stride_xn, stride_xc, stride_xs,
    mean_ptr, var_ptr,  # [C] ACC
    eps, C, S, s_blocks,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    # one program per (sample, channel block), looping over the sample's spatial blocks
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    rstd = 1.0 / tl.sqrt(tl.load(var_ptr + cols, mask=cmask, other=1.0) + eps)
    acc1 = tl.zeros([BLOCK_S, BLOCK_C], dtype=ACC)
    acc2 = tl.zeros([BLOCK_S, BLOCK_C], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = (s < S)[:, None] & cmask[None, :]
        x_offs = _offsets(n, s, cols, stride_xn, stride_xc, stride_xs)
        dy_offs = _offsets(n, s, cols, stride_dyn, stride_dyc, stride_dys)
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + dy_offs, mask=mask, other=0.0).to(ACC)
        acc1 += dy
        acc2 += dy * ((x - mean[None, :]) * rstd[None, :])  # dy = 0 on masked lanes
    tl.store(s1_ptr + n * C + cols, tl.sum(acc1, axis=0), mask=cmask)
    tl.store(s2_ptr + n * C + cols, tl.sum(acc2, axis=0), mask=cmask)


@triton.jit
def _cbn_bwd_class_kernel(
    dgamma_ptr, dbeta_ptr,  # [K, C] ACC
    s1_ptr, s2_ptr,  # [N, C] ACC
    order_ptr,  # [N] int64: sample indices sorted by label (stable)
    bounds_ptr,  # [K + 1] int64: class k owns order[bounds[k]:bounds[k + 1]]
    C,
    BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc1 = tl.zeros([BLOCK_C], dtype=ACC)
    acc2 = tl.zeros([BLOCK_C], dtype=ACC)
    for i in range(tl.load(bounds_ptr + k), tl.load(bounds_ptr + k + 1)):
        row = tl.load(order_ptr + i) * C
        acc1 += tl.load(s1_ptr + row + cols, mask=cmask, other=0.0)
        acc2 += tl.load(s2_ptr + row + cols, mask=cmask, other=0.0)
    tl.store(dbeta_ptr + k * C + cols, acc1, mask=cmask)
    tl.store(dgamma_ptr + k * C + cols, acc2, mask=cmask)


@triton.jit
def _cbn_bwd_moments_kernel(
    a_ptr, b_ptr,  # [C] ACC: channel means of γ·dy and γ·dy·x̂
    weight_ptr,  # [K, C] contiguous
    dgamma_ptr, dbeta_ptr,  # [K, C] ACC
    K, C, count,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rows = tl.arange(0, BLOCK_K)
    acc_a = tl.zeros([BLOCK_C], dtype=ACC)
    acc_b = tl.zeros([BLOCK_C], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        mask = ((k0 + rows) < K)[:, None] & cmask[None, :]
        offs = (k0 + rows)[:, None] * C + cols[None, :]
        gamma = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(ACC)
        acc_a += tl.sum(gamma * tl.load(dbeta_ptr + offs, mask=mask, other=0.0), axis=0)
        acc_b += tl.sum(gamma * tl.load(dgamma_ptr + offs, mask=mask, other=0.0), axis=0)
    tl.store(a_ptr + cols, acc_a / count, mask=cmask)
    tl.store(b_ptr + cols, acc_b / count, mask=cmask)


@triton.jit
def _cbn_bwd_dx_kernel(
    dx_ptr,  # [N, C, S]
    stride_dxn, stride_dxc, stride_dxs,
    dy_ptr,  # [N, C, S]
    stride_dyn, stride_dyc, stride_dys,
    x_ptr,  # [N, C, S]
    stride_xn, stride_xc, stride_xs,
    labels_ptr,  # [N] int64
    weight_ptr,  # [K, C] contiguous
    mean_ptr, var_ptr,  # [C] ACC
    a_ptr, b_ptr,  # [C] ACC (BATCH_STATS only)
    eps, C, S, s_blocks,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BATCH_STATS: tl.constexpr, ACC: tl.constexpr,
):
    n, s, cols, cmask, mask = _elementwise_tile(s_blocks, C, S, BLOCK_S, BLOCK_C)
    dy_offs = _offsets(n, s, cols, stride_dyn, stride_dyc, stride_dys)
    dy = tl.load(dy_ptr + dy_offs, mask=mask, other=0.0).to(ACC)
    rstd = 1.0 / tl.sqrt(tl.load(var_ptr + cols, mask=cmask, other=1.0) + eps)
    gamma = tl.load(weight_ptr + tl.load(labels_ptr + n) * C + cols, mask=cmask, other=0.0).to(ACC)
    if BATCH_STATS:
        x_offs = _offsets(n, s, cols, stride_xn, stride_xc, stride_xs)
        x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(ACC)
        mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
        a = tl.load(a_ptr + cols, mask=cmask, other=0.0)
        b = tl.load(b_ptr + cols, mask=cmask, other=0.0)
        x_hat = (x - mean[None, :]) * rstd[None, :]
        dx = (gamma[None, :] * dy - a[None, :] - x_hat * b[None, :]) * rstd[None, :]
    else:  # running statistics are constants: dx = γ r dy, x is not read
        dx = dy * (gamma * rstd)[None, :]
    dx_offs = _offsets(n, s, cols, stride_dxn, stride_dxc, stride_dxs)
    tl.store(dx_ptr + dx_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# BN-statistics loss backward


@triton.jit
def _bn_stats_bwd_kernel(
    dx_ptr,  # [N, C, S]
    stride_dxn, stride_dxc, stride_dxs,
    x_ptr,  # [N, C, S]
    stride_xn, stride_xc, stride_xs,
    grad_ptr,  # [] dL
    norms_ptr,  # [2] ACC: ||mean - rm||, ||var - rv||
    mean_ptr, var_ptr,  # [C] ACC
    running_mean_ptr, running_var_ptr,  # [C]
    C, S, s_blocks, count,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    n, s, cols, cmask, mask = _elementwise_tile(s_blocks, C, S, BLOCK_S, BLOCK_C)
    x_offs = _offsets(n, s, cols, stride_xn, stride_xc, stride_xs)
    x = tl.load(x_ptr + x_offs, mask=mask, other=0.0).to(ACC)
    grad = tl.load(grad_ptr).to(ACC)
    norm_mean = tl.load(norms_ptr)
    norm_var = tl.load(norms_ptr + 1)
    # d||g||/dg = g / ||g||, and 0 at g = 0 (the subgradient autograd picks)
    coef_mean = tl.where(norm_mean > 0, grad / tl.where(norm_mean > 0, norm_mean, 1.0), 0.0) / count
    coef_var = tl.where(norm_var > 0, 2 * grad / tl.where(norm_var > 0, norm_var, 1.0), 0.0) / count
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    rm = tl.load(running_mean_ptr + cols, mask=cmask, other=0.0).to(ACC)
    rv = tl.load(running_var_ptr + cols, mask=cmask, other=0.0).to(ACC)
    var = tl.load(var_ptr + cols, mask=cmask, other=0.0)
    a = coef_mean * (mean - rm)
    b = coef_var * (var - rv)
    dx = a[None, :] + b[None, :] * (x - mean[None, :])
    dx_offs = _offsets(n, s, cols, stride_dxn, stride_dxc, stride_dxs)
    tl.store(dx_ptr + dx_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# launchers


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _torch_acc(acc) -> torch.dtype:
    return torch.float64 if acc == tl.float64 else torch.float32


def _ncs_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """Strides (n, c, s) of ``t`` seen as [N, C, S], or None when its spatial dims do not flatten to one stride."""
    stride_s, expected = 1, None
    for size, stride in reversed(list(zip(t.shape[2:], t.stride()[2:]))):
        if size == 1:
            continue
        if expected is None:
            stride_s = stride
        elif stride != expected:
            return None
        expected = stride * size
    return t.stride(0), t.stride(1), stride_s


def _input(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``t`` (or a contiguous copy when its layout does not flatten) and its [N, C, S] strides."""
    strides = _ncs_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = _ncs_strides(t)
    return t, strides


def _output(out: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Where to write ``out``: itself, or a contiguous buffer to copy back (a layout with permuted spatial dims)."""
    strides = _ncs_strides(out)
    if strides is None:
        buf = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        return buf, _ncs_strides(buf)
    return out, strides


def _finish(out: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    if buf is not out:
        out.copy_(buf)
    return out


def _next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


class _Tiling:
    """Unit tiling of an [N, C, S] tensor, chosen from the layout of ``x``."""

    def __init__(self, x: torch.Tensor, x_strides: tuple[int, int, int]):
        self.N, self.C = x.shape[0], x.shape[1]
        self.S = math.prod(x.shape[2:])
        self.count = self.N * self.S
        if x_strides[1] == 1 and self.C > 1:  # channels_last: channels are the contiguous axis
            self.block_c = min(_next_pow2(self.C), max(1, MAX_TILE // 16))
            self.block_s = min(_next_pow2(self.S), max(1, MAX_TILE // self.block_c))
        else:
            self.block_s = min(_next_pow2(self.S), max(1, MAX_TILE // 4))
            self.block_c = min(_next_pow2(self.C), max(1, MAX_TILE // self.block_s))
        self.s_blocks = triton.cdiv(self.S, self.block_s)
        self.c_blocks = triton.cdiv(self.C, self.block_c)
        self.num_units = self.N * self.s_blocks
        self.num_warps = 1 if INTERPRETING else max(1, min(8, self.block_s * self.block_c // 1024))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_device(t: torch.Tensor):
    """Launch on the tensor's device (and its current stream)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _batch_stats(x, xs, tiling: _Tiling, acc) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and biased variance [C] in ACC: per-program partials, then a merge per channel block."""
    t = tiling
    if INTERPRETING:  # a few programs: every merge path runs, without paying for many interpreted programs
        per_program = triton.cdiv(t.num_units, 3)
    else:  # about 4 programs per SM, and at most MAX_PARTIALS partials per channel for the merge to read
        per_program = max(triton.cdiv(t.num_units * t.c_blocks, 4 * _sm_count(x.device)),
                          triton.cdiv(t.num_units, MAX_PARTIALS))
    programs = triton.cdiv(t.num_units, per_program)
    stat = _torch_acc(acc)
    part_count = torch.empty(programs, dtype=stat, device=x.device)
    part_mean = torch.empty(programs, t.C, dtype=stat, device=x.device)
    part_m2 = torch.empty(programs, t.C, dtype=stat, device=x.device)
    _stats_partial_kernel[(programs, t.c_blocks)](
        part_count, part_mean, part_m2, x, *xs, t.C, t.S, t.s_blocks, t.num_units, per_program,
        BLOCK_S=t.block_s, BLOCK_C=t.block_c, ACC=acc, num_warps=t.num_warps,
    )
    mean = torch.empty(t.C, dtype=stat, device=x.device)
    var = torch.empty(t.C, dtype=stat, device=x.device)
    block_c = min(_next_pow2(t.C), max(1, MAX_TILE // 256))
    _stats_merge_kernel[(triton.cdiv(t.C, block_c),)](
        mean, var, part_count, part_mean, part_m2, programs, t.C, t.count,
        BLOCK_P=min(_next_pow2(programs), MAX_PARTIALS), BLOCK_C=block_c, ACC=acc, num_warps=4,
    )
    return mean, var


def _bn_stats_norms(mean, var, running_mean, running_var) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, norms[2] = (||mean - rm||, ||var - rv||)) in ACC, one launch."""
    channels = mean.shape[0]
    loss = torch.empty((), dtype=mean.dtype, device=mean.device)
    norms = torch.empty(2, dtype=mean.dtype, device=mean.device)
    _bn_stats_norms_kernel[(1,)](
        loss, norms, mean, var, running_mean.contiguous(), running_var.contiguous(), channels,
        BLOCK_C=min(_next_pow2(channels), 1024), ACC=_acc(mean.dtype), num_warps=4,
    )
    return loss, norms


def cond_norm_forward(
    x: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    use_batch_stats: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean[C], var[C]): batch statistics (biased variance), or copies of the running ones."""
    acc = _acc(x.dtype)
    if x.numel() == 0:  # an empty batch (eval mode): nothing to launch; batch statistics of nothing are NaN
        if use_batch_stats:
            mean = var = torch.full((x.shape[1],), math.nan, dtype=_torch_acc(acc), device=x.device)
        else:
            mean, var = running_mean.to(_torch_acc(acc), copy=True), running_var.to(_torch_acc(acc), copy=True)
        return torch.empty_like(x), mean, var.clone()
    with _launch_device(x):
        x_in, xs = _input(x)
        t = _Tiling(x_in, xs)
        if use_batch_stats:
            mean, var = _batch_stats(x_in, xs, t, acc)
        else:
            mean, var = running_mean.to(_torch_acc(acc), copy=True), running_var.to(_torch_acc(acc), copy=True)
        y = torch.empty_like(x)
        y_buf, ys = _output(y)
        _cbn_fwd_kernel[(t.num_units, t.c_blocks)](
            y_buf, *ys, x_in, *xs, labels.contiguous(), weight.contiguous(), bias.contiguous(), mean, var,
            float(eps), t.C, t.S, t.s_blocks,
            BLOCK_S=t.block_s, BLOCK_C=t.block_c, ACC=acc, num_warps=t.num_warps,
        )
        return _finish(y, y_buf), mean, var


def update_running_stats(
    running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, count: int,
    momentum: float,
) -> None:
    """In-place running-statistics update from the batch statistics of ``count`` values per channel (one launch)."""
    channels = mean.shape[0]
    block_c = min(_next_pow2(channels), 1024)
    # the kernel writes unit-stride vectors: a strided view is updated through a contiguous copy
    rm, rv = running_mean.contiguous(), running_var.contiguous()
    with _launch_device(mean):
        _running_stats_kernel[(triton.cdiv(channels, block_c),)](
            rm, rv, mean, var, channels, count, float(momentum), BLOCK_C=block_c, ACC=_acc(mean.dtype), num_warps=4,
        )
    _finish(running_mean, rm)
    _finish(running_var, rv)


def cond_norm_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    use_batch_stats: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight[K, C], dbias[K, C]); the tables in weight's dtype."""
    acc = _acc(x.dtype)
    num_classes = weight.shape[0]
    if x.numel() == 0:
        return torch.empty_like(x), torch.zeros_like(weight), torch.zeros_like(weight)
    with _launch_device(x):
        x_in, xs = _input(x)
        dy, dys = _input(grad_y)
        t = _Tiling(x_in, xs)
        weight = weight.contiguous()
        s1 = torch.empty(t.N, t.C, dtype=mean.dtype, device=x.device)
        s2 = torch.empty_like(s1)
        _cbn_bwd_partial_kernel[(t.N, t.c_blocks)](
            s1, s2, dy, *dys, x_in, *xs, mean, var, float(eps), t.C, t.S, t.s_blocks,
            BLOCK_S=t.block_s, BLOCK_C=t.block_c, ACC=acc, num_warps=t.num_warps,
        )
        sorted_labels, order = torch.sort(labels, stable=True)
        bounds = torch.searchsorted(sorted_labels, torch.arange(num_classes + 1, device=x.device))
        dgamma = torch.empty(num_classes, t.C, dtype=mean.dtype, device=x.device)
        dbeta = torch.empty_like(dgamma)
        block_c = min(_next_pow2(t.C), 256)
        _cbn_bwd_class_kernel[(num_classes, triton.cdiv(t.C, block_c))](
            dgamma, dbeta, s1, s2, order, bounds, t.C, BLOCK_C=block_c, ACC=acc, num_warps=2,
        )
        a = b = None
        if use_batch_stats:
            a = torch.empty(t.C, dtype=mean.dtype, device=x.device)
            b = torch.empty_like(a)
            block_c = min(_next_pow2(t.C), 64)
            _cbn_bwd_moments_kernel[(triton.cdiv(t.C, block_c),)](
                a, b, weight, dgamma, dbeta, num_classes, t.C, t.count,
                BLOCK_K=min(_next_pow2(num_classes), 32), BLOCK_C=block_c, ACC=acc, num_warps=4,
            )
        dx = torch.empty_like(x)
        dx_buf, dxs = _output(dx)
        _cbn_bwd_dx_kernel[(t.num_units, t.c_blocks)](
            dx_buf, *dxs, dy, *dys, x_in, *xs, labels.contiguous(), weight, mean, var, a, b, float(eps), t.C, t.S,
            t.s_blocks,
            BLOCK_S=t.block_s, BLOCK_C=t.block_c, BATCH_STATS=use_batch_stats, ACC=acc, num_warps=t.num_warps,
        )
        return _finish(dx, dx_buf), dgamma.to(weight.dtype), dbeta.to(weight.dtype)


def bn_stats_forward(
    x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean[C], var[C]) in the compute dtype, from one read of x."""
    with _launch_device(x):
        x_in, xs = _input(x)
        mean, var = _batch_stats(x_in, xs, _Tiling(x_in, xs), _acc(x.dtype))
        loss, _ = _bn_stats_norms(mean, var, running_mean, running_var)
        return loss, mean, var


def bn_stats_backward(
    grad_loss: torch.Tensor,
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> torch.Tensor:
    """dx, in x's dtype and layout."""
    with _launch_device(x):
        x_in, xs = _input(x)
        t = _Tiling(x_in, xs)
        _, norms = _bn_stats_norms(mean, var, running_mean, running_var)
        dx = torch.empty_like(x)
        dx_buf, dxs = _output(dx)
        _bn_stats_bwd_kernel[(t.num_units, t.c_blocks)](
            dx_buf, *dxs, x_in, *xs, grad_loss, norms, mean, var, running_mean.contiguous(), running_var.contiguous(),
            t.C, t.S, t.s_blocks, t.count,
            BLOCK_S=t.block_s, BLOCK_C=t.block_c, ACC=_acc(x.dtype), num_warps=t.num_warps,
        )
        return _finish(dx, dx_buf)
