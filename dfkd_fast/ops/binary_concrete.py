"""binary_concrete_adjacency: relaxed-Bernoulli pseudo-graph edges with a sparsity budget, and the PyG edge list.

The C++ ops ``dfkd_fast::binary_concrete_fwd`` / ``dfkd_fast::binary_concrete_bwd`` (schemas in csrc/dfkd_fast.cpp,
kernels in csrc/cpu and csrc/cuda) get their fake kernels and autograd formula here. The forward returns the
adjacency and, per graph, the budget threshold ``(z, flat index)`` of the last kept pair. The backward of a relaxed
float32/float64 sample reads the sample (``dy * y (1 - y) / tau``: the output is saved, no new bytes, no noise
recomputed); for hard samples and float16/bfloat16 it recomputes the noise from ``(seed, offset)`` and rebuilds the
kept pairs from the thresholds (20-36 bytes per graph, see ``saved_extra_bytes``). Double backward is exact on
every backend (a differentiable formula runs under ``create_graph=True``). The maths is in
:mod:`dfkd_fast.reference.binary_concrete`; without ``dfkd_fast._C`` the reference runs.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

from dfkd_fast import _checks
from dfkd_fast._backend import extension, use_fused
from dfkd_fast.ops._autograd import _no_jvp
from dfkd_fast.reference._common import compute_dtype
from dfkd_fast.reference.binary_concrete import binary_concrete_adjacency_reference, edge_budget, node_mask

MAX_SEED = 2**63 - 1
MAX_NODES = 46340  # a pair's flat index i * n + j within its graph is ranked as 32 bits by the CUDA budget select


def _fake_fwd(logits, num_nodes, budget, tau, seed, offset, symmetric, hard, self_loops):
    batch = logits.shape[0]
    return (
        logits.new_empty(logits.shape),
        logits.new_empty(batch, dtype=compute_dtype(logits.dtype)),
        logits.new_empty(batch, dtype=torch.int64),
    )


def _fake_bwd(grad, logits, num_nodes, threshold_z, threshold_idx, tau, seed, offset, symmetric):
    return logits.new_empty(logits.shape)


def _fake_bwd_sample(grad, sample, tau, symmetric):
    return sample.new_empty(sample.shape)


# What the backward keeps, per case (B graphs of n x n, itemsize s of the logits), beyond the caller's logits and the
# returned adjacency (saved_extra_bytes gives the figure; tests/test_binary_concrete_fused.py counts it):
# * relaxed float32/float64 sample: the sample itself, the op's output, which is alive anyway wherever a later layer
#   uses it: 0 bytes, and dlogit = dy * y (1 - y) / tau is read from it with no noise recomputed;
# * hard samples (0/1: y is not in the output) and float16/bfloat16 (y rounded to 8-11 bits would spoil y (1 - y)):
#   the logits, the node counts and budget (8 bytes per graph each) and the thresholds (12 bytes per graph, 16 for
#   float64), and the backward recomputes the noise from (seed, offset); saving y instead would cost B n^2 s bytes.
# The choice is the same on every device, so that CPU and CUDA gradients stay the same numbers.
def saved_extra_bytes(batch: int, dtype: torch.dtype, hard: bool, budget: bool) -> int:
    """Bytes the backward of ``binary_concrete_adjacency`` keeps beyond its logits and its output."""
    if _reads_sample(hard, dtype):
        return 0
    return batch * (torch.finfo(compute_dtype(dtype)).bits // 8 + 8 + 8 + (8 if budget else 0))


def _reads_sample(hard: bool, dtype: torch.dtype) -> bool:
    return not hard and dtype in (torch.float32, torch.float64)


def _setup_context(ctx, inputs, output):
    logits, num_nodes, budget, tau, seed, offset, symmetric, hard, _self_loops = inputs
    adj, threshold_z, threshold_idx = output
    ctx.mark_non_differentiable(threshold_z, threshold_idx)
    ctx.reads_sample = _reads_sample(hard, logits.dtype)
    if ctx.reads_sample:
        ctx.save_for_backward(adj)
    else:
        ctx.save_for_backward(logits, num_nodes, threshold_z, threshold_idx, budget)
    ctx.params = (tau, seed, offset, symmetric)


def _backward(ctx, grad, _grad_threshold_z, _grad_threshold_idx):
    tau, seed, offset, symmetric = ctx.params
    nones = (None,) * 8
    if torch.is_grad_enabled():  # create_graph=True: a differentiable formula, so that double backward is exact
        return (_differentiable_backward(ctx, grad), *nones)
    if ctx.reads_sample:
        (adj,) = ctx.saved_tensors
        return (torch.ops.dfkd_fast.binary_concrete_bwd_sample(grad, adj, tau, symmetric), *nones)
    logits, num_nodes, threshold_z, threshold_idx, _budget = ctx.saved_tensors
    d_logits = torch.ops.dfkd_fast.binary_concrete_bwd(grad, logits, num_nodes, threshold_z, threshold_idx,
                                                       *ctx.params)
    return (d_logits, *nones)


def _differentiable_backward(ctx, grad: Tensor) -> Tensor:
    """``dy * y (1 - y) / tau`` (upper triangle, both mirrored dy, when symmetric) in torch ops, with ``y`` the
    relaxed sample as a function of the logits: the saved output, or a relaxed redraw for hard samples. Its own
    gradient is then the exact second derivative, as the reference's autograd gives."""
    tau, seed, offset, symmetric = ctx.params
    if ctx.reads_sample:
        (y,) = ctx.saved_tensors
    else:
        logits, num_nodes, _tz, _ti, budget = ctx.saved_tensors
        y = _fused_forward(logits, num_nodes, budget, tau, seed, offset, symmetric, False, False)[0]
    d = grad * (y * (1 - y) / tau)
    return (d + d.mT).triu(1) if symmetric else d


class _FusedSample(torch.autograd.Function):
    """The C++/CUDA op with the autograd formula registered below, as a setup_context-style Function: torch.func
    (grad, vjp, jacrev) refuses the Function that register_autograd builds. Under torch.compile the op is called
    directly (Dynamo traces its registration)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return torch.ops.dfkd_fast.binary_concrete_fwd(*args)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)
    jvp = staticmethod(functools.partial(_no_jvp, "binary_concrete_fwd"))


def _fused_forward(*args):
    """The C++/CUDA forward with its autograd formula: the op itself under torch.compile (Dynamo traces its
    registration), else through :class:`_FusedSample` (which torch.func accepts)."""
    if torch.compiler.is_compiling():
        return torch.ops.dfkd_fast.binary_concrete_fwd(*args)
    return _FusedSample.apply(*args)


# The schemas live in the extension: register the Python faces only where it is built (an unbuilt extension is
# reported, once, when a call asks for the fused backend).
if importlib.util.find_spec("dfkd_fast._C") is not None and extension() is not None:
    torch.library.register_fake("dfkd_fast::binary_concrete_fwd")(_fake_fwd)
    torch.library.register_fake("dfkd_fast::binary_concrete_bwd")(_fake_bwd)
    torch.library.register_fake("dfkd_fast::binary_concrete_bwd_sample")(_fake_bwd_sample)
    torch.library.register_autograd("dfkd_fast::binary_concrete_fwd", _backward, setup_context=_setup_context)


def _num_nodes_tensor(fn: str, num_nodes: object, batch: int, n: int, device: torch.device,
                      data: str = "logits", move: bool = True) -> Tensor:
    """The checked counts as int64, on ``device`` (``move``) or where they are."""
    if isinstance(num_nodes, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in num_nodes):
            raise TypeError(f"{fn}: argument 'num_nodes' must be a list of ints or an integer tensor")
        num_nodes = torch.tensor(num_nodes, dtype=torch.int64)
    t = _checks.tensor(fn, "num_nodes", num_nodes, ndim=1, dtypes=_checks.INDEX_DTYPES)
    # Counts on the CPU are welcome anywhere (copied without a sync); elsewhere they must be on the data's device.
    if t.device.type != "cpu" and t.device != device:
        raise ValueError(f"{fn}: argument 'num_nodes' is on {t.device} but '{data}' is on {device}; pass the counts "
                         f"on {device} or on the CPU")
    if t.shape[0] != batch:
        raise ValueError(f"{fn}: argument 'num_nodes' must have one count per graph (length {batch}), "
                         f"got shape {tuple(t.shape)}")
    if t.numel() and _checks.can_inspect_values(t):
        low, high = int(t.min()), int(t.max())
        if low < 0 or high > n:
            raise ValueError(f"{fn}: argument 'num_nodes' must hold node counts in [0, {n}] (the padded size n), "
                             f"found {low if low < 0 else high}")
    t = t.to(torch.int64)
    return _to_device(t, device) if move else t


def _check_tau_precision(fn: str, tau: float, dtype: torch.dtype) -> None:
    """The samplers divide by tau in float32 unless the logits are float64: tau must stay a normal, finite float32
    (1e-300 would be 0 there, and every gradient NaN)."""
    if dtype != torch.float64 and not torch.finfo(torch.float32).tiny <= tau <= torch.finfo(torch.float32).max:
        raise ValueError(f"{fn}: argument 'tau' = {tau!r} is not a normal float32 number, the precision the sampler "
                         f"computes in for {str(dtype).replace('torch.', '')} logits; use tau in [1.2e-38, 3.4e38] "
                         "or float64 logits")


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t.to(device)`` that does not wait for the GPU: a host-to-device copy staged in pinned memory, non-blocking
    (a plain copy from pageable memory synchronises the stream)."""
    if t.device.type == "cpu" and device.type == "cuda" and not torch.compiler.is_compiling():
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def binary_concrete_adjacency(
    logits: Tensor,
    num_nodes: Tensor | list[int],
    tau: float = 2.0 / 3.0,
    *,
    seed: int | None = None,
    offset: int = 0,
    symmetric: bool = True,
    hard: bool = False,
    self_loops: bool = False,
    k: int | None = None,
    ratio: float | None = None,
    per_node: float | None = None,
    backend: str | None = None,
) -> Tensor:
    """Sample Binary Concrete (relaxed Bernoulli) adjacency matrices for a padded batch of graphs.

    ``y = sigmoid((logits + log u - log(1 - u)) / tau)`` with Philox noise ``u`` drawn from ``(seed, offset)``, on the
    pairs of valid nodes; see :mod:`dfkd_fast.reference.binary_concrete` for the exact definition. Every backend
    draws the same bits for float32/float16/bfloat16 logits (float64: the same noise and hard samples, relaxed
    values within ~1e-16).

    Backward: a relaxed float32/float64 sample is read back (``dy * y (1 - y) / tau``; 0 bytes saved beyond the
    output, which must then not be modified in place before the backward); hard samples and float16/bfloat16
    recompute the noise and keep 20-36 bytes per graph (``saved_extra_bytes``). Double backward is exact on every
    backend.

    Args:
        logits: ``[B, n, n]`` edge logits (only the strict upper triangle is read when ``symmetric``).
        num_nodes: ``[B]`` node count of each graph (``<= n``); the padding rows/columns are 0. A list, a CPU
            tensor (copied without a sync) or a tensor on the logits' device.
        tau: temperature (> 0, and a normal float32 number unless the logits are float64); 2/3 is Maddison et
            al.'s recommendation for binary variables.
        seed, offset: the noise stream; the same pair gives the same sample on every device and backend.
            ``seed=None`` draws one from torch's default CPU generator.
        symmetric: undirected graphs (mirrored upper triangle), else directed edges.
        hard: forward ``1[y > 1/2]`` (a Bernoulli(sigmoid(logit)) sample) with the straight-through gradient.
        self_loops: set the diagonal of valid nodes to 1.
        k, ratio, per_node: sparsity budget: keep at most ``k`` edges per graph, ``floor(ratio * pairs)`` or
            ``floor(per_node * nodes)`` (a mean degree of ``2 * per_node`` when ``symmetric``, whatever the graph's
            size), chosen by the largest relaxed values (undirected pairs count once when ``symmetric``). At most
            one of the three.
        backend: ``"auto"`` (the C++ kernel when ``dfkd_fast._C`` is built), ``"fused"`` or ``"reference"``.
    """
    fn = "binary_concrete_adjacency"
    _checks.tensor(fn, "logits", logits, ndim=3, dtypes=_checks.FLOAT_DTYPES)
    batch, rows, n = logits.shape
    if rows != n:
        raise ValueError(f"{fn}: argument 'logits' must be square per graph, [B, n, n], got shape {tuple(logits.shape)}")
    if n > MAX_NODES:
        raise ValueError(f"{fn}: argument 'logits' allows at most {MAX_NODES} nodes per graph, got n = {n}")
    num_nodes_t = _num_nodes_tensor(fn, num_nodes, batch, n, logits.device)
    tau = _checks.positive(fn, "tau", tau)
    _check_tau_precision(fn, tau, logits.dtype)
    for name, flag in (("symmetric", symmetric), ("hard", hard), ("self_loops", self_loops)):
        if not isinstance(flag, bool):
            raise TypeError(f"{fn}: argument '{name}' must be a bool, got {type(flag).__name__}")
    if seed is None:
        seed = int(torch.randint(0, MAX_SEED, (1,)).item())
    _checks.integer(fn, "seed", seed, low=0, high=MAX_SEED)
    _checks.integer(fn, "offset", offset, low=0, high=MAX_SEED)
    given = [f"{name}={value}" for name, value in (("k", k), ("ratio", ratio), ("per_node", per_node))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"{fn}: give at most one of 'k', 'ratio' and 'per_node', got {' and '.join(given)}")
    if k is not None:
        _checks.integer(fn, "k", k, low=0, high=MAX_SEED)
    if ratio is not None:
        _checks.number_in(fn, "ratio", ratio, 0.0, 1.0, "[0, 1]")
    if per_node is not None:
        _checks.number_in(fn, "per_node", per_node, 0.0, 2.0**31, "[0, 2**31)")
    _checks.finite(fn, "logits", logits)
    budget = edge_budget(num_nodes_t, symmetric, k, ratio, per_node)
    if use_fused(fn, backend, logits.device, "cpp"):
        return _fused_forward(logits, num_nodes_t, budget, tau, seed, offset, symmetric, hard, self_loops)[0]
    return binary_concrete_adjacency_reference(logits, num_nodes_t, tau, seed, offset, symmetric, hard, self_loops,
                                               budget)


def adjacency_to_pyg(
    adj: Tensor,
    num_nodes: Tensor | list[int],
    *,
    max_edges: int | None = None,
    symmetric: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Padded dense adjacency ``[B, n, n]`` -> PyG's ``(edge_index [2, E], edge_weight [E], batch [sum n_b])``.

    Nodes are numbered compactly (graph ``b``'s nodes follow graph ``b-1``'s) and ``edge_weight`` keeps the gradient
    of ``adj``. Self-loops on the diagonal are not listed (add them in the layer, as GCNConv does).

    * ``max_edges=None``: every nonzero off-diagonal entry is an edge (E depends on the data: one host sync).
    * ``max_edges=k``: the ``k`` largest entries of each graph (pairs when ``symmetric``), so E is fixed and nothing
      waits for the device. Graphs with fewer candidate pairs are padded with zero-weight edges, which add nothing
      to weighted sum/mean aggregation or to GCN degrees. A batch without any node gets no edges at all (E = 0).
    ``symmetric``: read the upper triangle and list both directions of each pair (PyG's undirected convention).
    ``num_nodes`` on the CPU (a list or CPU tensor) keeps the conversion free of device syncs.
    """
    fn = "adjacency_to_pyg"
    _checks.tensor(fn, "adj", adj, ndim=3, dtypes=_checks.FLOAT_DTYPES)
    batch, rows, n = adj.shape
    if rows != n:
        raise ValueError(f"{fn}: argument 'adj' must be square per graph, [B, n, n], got shape {tuple(adj.shape)}")
    counts = _num_nodes_tensor(fn, num_nodes, batch, n, adj.device, data="adj", move=False)
    if max_edges is not None:
        _checks.integer(fn, "max_edges", max_edges, low=0)
    device = adj.device
    total = int(counts.sum())  # no device sync when the counts live on the CPU
    if total == 0:  # no node at all: no edge, padding or not, has a node to point at
        empty = torch.zeros(2, 0, dtype=torch.int64, device=device)
        return empty, adj.reshape(-1)[:0], torch.zeros(0, dtype=torch.int64, device=device)
    counts_dev = _to_device(counts, device)
    starts = torch.cumsum(counts_dev, 0) - counts_dev
    graph_of_node = torch.repeat_interleave(torch.arange(batch, device=device), counts_dev, output_size=total)
    nodes = node_mask(counts_dev, n)
    candidates = nodes[:, :, None] & nodes[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=device)
    if symmetric:
        candidates = candidates & torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
    if max_edges is None:
        b, i, j = (candidates & (adj != 0)).nonzero(as_tuple=True)
        weight = adj[b, i, j]
    else:
        per_graph = min(max_edges, n * (n - 1) // 2 if symmetric else n * (n - 1))
        scores = adj.masked_fill(~candidates, float("-inf")).reshape(batch, n * n)
        flat = scores.topk(per_graph, dim=1).indices  # [B, per_graph]
        real = candidates.reshape(batch, n * n).gather(1, flat)
        weight = (adj.reshape(batch, n * n).gather(1, flat) * real).reshape(-1)
        flat = flat.reshape(-1)
        i = torch.where(real.reshape(-1), flat // n, 0)
        j = torch.where(real.reshape(-1), flat % n, 0)
        b = torch.arange(batch, device=device).repeat_interleave(per_graph)
    src = starts[b] + i
    dst = starts[b] + j
    if max_edges is not None:  # zero-weight padding of a graph with no node at all must still index a real node
        src, dst = src.clamp(max=total - 1), dst.clamp(max=total - 1)
    if symmetric:
        src, dst, weight = torch.cat([src, dst]), torch.cat([dst, src]), torch.cat([weight, weight])
    return torch.stack([src, dst]), weight, graph_of_node
