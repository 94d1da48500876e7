"""Binary Concrete (relaxed Bernoulli) adjacency sampling for a padded batch of graphs.

For graph ``b`` with ``n_b`` nodes (padded to ``n``), edge logits ``l`` and temperature ``tau``:

    u ~ U(0, 1) (Philox, see reference.philox)       L = log u - log(1 - u)   (logistic noise, in float64)
    z = l + L                                         y = sigmoid(z / tau)

Exactly as the C++ and CUDA kernels compute it, so that every backend draws the same bits (float32, float16 and
bfloat16 logits; float64 logits: the same noise, z and hard samples, relaxed values within ~1e-16): L is
``log(u / (1 - u))`` by :func:`log_f64` in float64 rounded once to the compute dtype (float32, or float64 for float64
logits), ``z = l + L`` in that dtype, and the float32 ``y`` is :func:`sigmoid_f32` (``1 / (1 + e)`` or
``e / (1 + e)`` with ``e = exp(-|z / tau|)``), all from correctly rounded arithmetic. Both are within 1-2 ulp of the
exact functions.

* ``symmetric``: only the strict upper triangle of ``logits`` and of the noise is used and mirrored, so the graph is
  undirected; otherwise every off-diagonal pair is its own directed edge.
* Only pairs of valid nodes (``i, j < n_b``, ``i != j``) can be edges; the rest of the output is 0.
* ``budget``: keep at most ``budget[b]`` edges (undirected pairs when symmetric) per graph: the largest relaxed
  values, ranked by ``z`` (monotone in ``y``, and strictly ordered where ``y`` saturates), ties to the lower index.
  Dropped edges are 0 and pass no gradient.
* ``hard``: the output is ``1[z > 0]`` (equivalently ``y > 1/2``, a Bernoulli(sigmoid(l)) draw) on kept edges,
  with the straight-through gradient of the relaxed value.
* ``self_loops``: the diagonal of valid nodes is 1 (constant; not counted in the budget).

Gradient: ``dl = dy * y * (1 - y) / tau`` on kept edges (both mirrored entries add up on the upper triangle).
"""

from __future__ import annotations

import torch

from dfkd_fast.reference._common import compute_dtype
from dfkd_fast.reference.philox import philox_uniform


# Constants of log_f64 (fdlibm's __ieee754_log) and exp_neg_f32 (Cephes' expf), as in csrc/binary_concrete.h.
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_LG = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01, 2.222219843214978396e-01,
       1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01)
_EXP_LIMIT_BITS = 0x42AE0000  # 87.0f
_ROUND_MAGIC, _ROUND_MAGIC_BITS = 12582912.0, 0x4B400000  # 1.5 * 2**23
_ONE_BITS = 0x3F800000  # 1.0f
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def log_f64(q: torch.Tensor) -> torch.Tensor:
    """``log(q)`` of positive normal float64 values with only correctly rounded ``+ - * /`` and integer bit
    operations: fdlibm's ``__ieee754_log`` (< 1 ulp), step for step as the C++/CUDA kernels' ``bc::log_pos``, so
    every backend gets the same bits (a library ``log`` differs between CPU and GPU in the last bit)."""
    bits = q.view(torch.int64)
    hx = (bits >> 32) + (0x3FF00000 - 0x3FE6A09E)
    dk = (0x4330000000000000 + (hx >> 20) - 0x3FF + 1024).view(torch.float64) - 4503599627371520.0  # k, exactly
    f = ((((hx & 0xFFFFF) + 0x3FE6A09E) << 32) | (bits & 0xFFFFFFFF)).view(torch.float64) - 1.0  # in [-0.29, 0.41)
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
    t2 = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6])))
    lo = s * (hfsq + (t2 + t1)) + dk * _LN2_LO
    return lo - hfsq + f + dk * _LN2_HI


def exp_neg_f32(a: torch.Tensor) -> torch.Tensor:
    """``exp(-a)`` of float32 ``a >= 0`` (0 beyond 87), Cephes' expf step for step as the kernels' ``bc::exp_neg``."""
    over = a.view(torch.int32) - _EXP_LIMIT_BITS
    below = over >> 31  # -1 where a < 87
    x = -(_EXP_LIMIT_BITS + (over & below)).view(torch.float32)  # -min(a, 87)
    km = x * 1.44269504088896341 + _ROUND_MAGIC
    k = km - _ROUND_MAGIC  # round(x / ln 2)
    r = x - k * 0.693359375 - k * -2.12194440e-4
    p = torch.full_like(r, _EXP_P[0])
    for c in _EXP_P[1:]:
        p = p * r + c
    p = p * (r * r) + r + 1.0
    scale = ((km.view(torch.int32) - _ROUND_MAGIC_BITS + 127) << 23).view(torch.float32)  # 2**k
    return p * scale * (_ONE_BITS & below).view(torch.float32)


def sigmoid_f32(t: torch.Tensor) -> torch.Tensor:
    """``sigmoid(t)`` of float32 ``t`` with the kernels' bits: ``1 / (1 + e)`` or ``e / (1 + e)``, ``e = exp(-|t|)``.
    Not differentiable (bit operations); :func:`relaxed_sample` attaches torch.sigmoid's gradient."""
    bits = t.view(torch.int32)
    e = exp_neg_f32((bits & 0x7FFFFFFF).view(torch.float32))
    negative = bits >> 31
    numerator = ((_ONE_BITS & ~negative) | (e.view(torch.int32) & negative)).view(torch.float32)
    return numerator / (e + 1.0)


def relaxed_sample(z: torch.Tensor, tau: float) -> torch.Tensor:
    """``sigmoid(z / tau)``: in float32 the kernels' bits (sigmoid_f32) with torch.sigmoid's gradient (to every
    order); in float64 torch.sigmoid, within ~1e-16 of the kernels (whose exp is the platform's)."""
    t = z / torch.full_like(z, tau)  # tensor / tensor: a true division (a scalar divisor may become a reciprocal)
    y = torch.sigmoid(t)
    if z.dtype != torch.float32:
        return y
    return sigmoid_f32(t.detach()) + (y - y.detach())


def logistic_noise(shape: torch.Size, seed: int, offset: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``log(u / (1 - u))`` (= ``log u - log(1 - u)``) for Philox uniforms, evaluated in float64 with
    :func:`log_f64` and rounded once to ``dtype``: the same bits as the kernels."""
    numel = 1
    for size in shape:
        numel *= size
    u = philox_uniform(numel, seed, offset, device).to(torch.float64)
    return log_f64(u / (1.0 - u)).to(dtype).view(shape)


def node_mask(num_nodes: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] bool: which padded slots hold a node."""
    return torch.arange(n, device=num_nodes.device)[None, :] < num_nodes[:, None]


def pair_counts(num_nodes: torch.Tensor, symmetric: bool) -> torch.Tensor:
    """Number of candidate edges per graph: n(n-1)/2 undirected pairs, or n(n-1) directed ones."""
    pairs = num_nodes * (num_nodes - 1)
    return pairs // 2 if symmetric else pairs


def edge_budget(
    num_nodes: torch.Tensor, symmetric: bool, k: int | None = None, ratio: float | None = None,
    per_node: float | None = None,
) -> torch.Tensor | None:
    """Per-graph edge budget [B] int64: ``k`` edges, ``floor(ratio * pairs)`` or ``floor(per_node * nodes)``; None
    when none is set."""
    if k is not None:
        return torch.full_like(num_nodes, k, dtype=torch.int64)
    if ratio is not None:
        return torch.floor(ratio * pair_counts(num_nodes, symmetric).to(torch.float64)).to(torch.int64)
    if per_node is not None:
        return torch.floor(per_node * num_nodes.to(torch.float64)).to(torch.int64)
    return None


def perturbed_logits(
    logits: torch.Tensor, num_nodes: torch.Tensor, seed: int, offset: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, valid, candidates): perturbed logits (mirrored if symmetric), valid pairs, and the pairs a budget ranks."""
    acc = compute_dtype(logits.dtype)
    n = logits.shape[-1]
    z = logits.to(acc) + logistic_noise(logits.shape, seed, offset, logits.device, acc)
    nodes = node_mask(num_nodes.to(logits.device), n)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=logits.device)
    valid = nodes[:, :, None] & nodes[:, None, :] & off_diagonal
    if not symmetric:
        return z, valid, valid
    upper = torch.ones(n, n, dtype=torch.bool, device=logits.device).triu(1)
    return torch.where(upper, z, z.transpose(1, 2)), valid, valid & upper


def budget_mask(z: torch.Tensor, candidates: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """The ``budget[b]`` candidates of largest ``z`` in each graph (ties to the lower flat index)."""
    batch, n = z.shape[0], z.shape[-1]
    scores = z.masked_fill(~candidates, float("-inf")).reshape(batch, n * n)  # (not -1: B = 0 must work)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[1], device=z.device).expand(batch, -1)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < budget.to(z.device)[:, None]).view_as(candidates) & candidates


def binary_concrete_adjacency_reference(
    logits: torch.Tensor,
    num_nodes: torch.Tensor,
    tau: float,
    seed: int,
    offset: int = 0,
    symmetric: bool = True,
    hard: bool = False,
    self_loops: bool = False,
    budget: torch.Tensor | None = None,
) -> torch.Tensor:
    z, valid, candidates = perturbed_logits(logits, num_nodes, seed, offset, symmetric)
    kept = valid
    if budget is not None:
        kept = budget_mask(z, candidates, budget)
        if symmetric:
            kept = kept | kept.transpose(1, 2)
    out = torch.where(kept, relaxed_sample(z, tau), 0.0)
    if hard:
        out = ((z > 0) & kept).to(out.dtype) + (out - out.detach())
    if self_loops:
        nodes = node_mask(num_nodes.to(logits.device), logits.shape[-1])
        out = out + torch.diag_embed(nodes.to(out.dtype))
    return out.to(logits.dtype)
