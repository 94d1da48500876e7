"""binary_concrete_adjacency: Philox known answers, the Bernoulli law of hard samples, the budget, structure,
gradients, the PyG conversion, the module's stream, compile and bad inputs. Properties run on both backends."""

import copy
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import dfkd_fast
from dfkd_fast.nn import BinaryConcreteAdjacency
from dfkd_fast.reference import binary_concrete_adjacency_reference, philox_uniform
from dfkd_fast.reference.binary_concrete import exp_neg_f32, log_f64, sigmoid_f32
from dfkd_fast.reference.philox import philox4x32

BACKENDS = ["reference", "fused"]


@pytest.mark.parametrize(
    "counter,key,expected",
    [  # Random123's known-answer vectors for philox4x32_10
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_philox_known_answers(counter, key, expected):
    words = philox4x32(tuple(torch.tensor([c]) for c in counter), key)
    assert tuple(int(w) for w in words) == expected


def test_philox_uniform_layout_and_range():
    u = philox_uniform(4099, seed=7, offset=3)
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.02
    torch.testing.assert_close(philox_uniform(10, 7, 3), u[:10], rtol=0, atol=0)  # element e depends on e only
    assert not torch.equal(philox_uniform(10, 7, 4), u[:10])
    assert not torch.equal(philox_uniform(10, 8, 3), u[:10])
    # element 5 is word 1 of the block with counter (1, 0, offset, 0)
    block = philox4x32(tuple(torch.tensor([c]) for c in (1, 0, 3, 0)), (7, 0))
    assert u[5].item() == ((int(block[1]) >> 9) + 0.5) * 2.0**-23


def test_philox_op_opcheck_and_compile():
    """The reference generator is an opaque custom op, so that torch.compile of a reference stays fast."""
    torch.library.opcheck(torch.ops.dfkd_fast.philox_uniform.default, (10, 3, 4, torch.device("cpu")))
    compiled = torch.compile(lambda: philox_uniform(9, 3, 4) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(), philox_uniform(9, 3, 4) * 2, rtol=0, atol=0)


def test_noise_rounds_like_torch_log_for_every_uniform():
    """log_f64 (the kernels' log, correctly rounded arithmetic only) gives, for all 2^23 uniforms, the float32 noise
    of float64 torch.log(u) - torch.log1p(-u), and agrees with torch.log to ~1 ulp in float64."""
    for chunk in torch.arange(2**23, dtype=torch.float64).chunk(8):  # chunks: ~100 MB of temporaries at a time
        u = (chunk + 0.5) * 2.0**-23
        assert torch.equal(log_f64(u / (1 - u)).float(), (torch.log(u) - torch.log1p(-u)).float())
    q = torch.logspace(-24, 24, 100_001, base=2.0, dtype=torch.float64)
    torch.testing.assert_close(log_f64(q), torch.log(q), rtol=2 * 2.0**-52, atol=2 * 2.0**-52)


def test_float32_sigmoid_is_accurate():
    """exp_neg_f32 within 1 ulp of exp, sigmoid_f32 within 2 ulp of the float64 sigmoid (flushing below 2^-125)."""
    eps = torch.finfo(torch.float32).eps
    a = torch.linspace(0, 87, 200_001, dtype=torch.float32)[:-1]
    exact = torch.exp(-a.double())
    assert ((exp_neg_f32(a).double() - exact).abs() / exact).max() <= eps
    assert exp_neg_f32(torch.tensor([87.0, 200.0, float("inf")])).eq(0).all()
    t = torch.linspace(-80, 80, 200_001, dtype=torch.float32)
    exact = torch.sigmoid(t.double())
    assert ((sigmoid_f32(t).double() - exact).abs() / exact).max() <= 2 * eps


def test_relaxed_values_follow_the_formula():
    logits, tau = torch.randn(2, 5, 5, dtype=torch.float64), 0.7
    y = binary_concrete_adjacency_reference(logits, torch.tensor([5, 5]), tau, seed=11, offset=2, symmetric=False)
    u = philox_uniform(50, 11, 2).double().view(2, 5, 5)
    expected = torch.sigmoid((logits + torch.log(u / (1 - u))) / tau) * (1 - torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_hard_edge_frequency_is_sigmoid_of_logit(backend, symmetric):
    """Each hard edge is an independent Bernoulli(sigmoid(logit)): many graphs share one logit matrix."""
    n, samples = 6, 4000
    logits = torch.linspace(-3, 3, n * n).view(1, n, n).repeat(samples, 1, 1)
    adj = dfkd_fast.binary_concrete_adjacency(logits, [n] * samples, 0.5, seed=5, hard=True, symmetric=symmetric,
                                              backend=backend)
    freq = adj.mean(0)
    p = torch.sigmoid(logits[0])
    if symmetric:
        p = torch.where(torch.ones(n, n, dtype=torch.bool).triu(1), p, p.T)
    off = ~torch.eye(n, dtype=torch.bool)
    bound = 5 * torch.sqrt(p * (1 - p) / samples) + 1e-3
    assert ((freq - p).abs()[off] <= bound[off]).all()
    assert (freq.diagonal() == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("budget", [{"k": 0}, {"k": 5}, {"k": 400}, {"ratio": 0.25}, {"ratio": 1.0},
                                    {"per_node": 0.7}, {"per_node": 1.0}, {"per_node": 50.0}])
def test_budget_keeps_exactly_min_k_pairs(backend, symmetric, budget):
    num_nodes = [1, 2, 17, 9, 0]
    logits = torch.randn(5, 17, 17) * 2
    adj = dfkd_fast.binary_concrete_adjacency(logits, num_nodes, 1.0, seed=3, symmetric=symmetric, backend=backend,
                                              **budget)
    for b, n in enumerate(num_nodes):
        pairs = n * (n - 1) // (2 if symmetric else 1)
        if "k" in budget:
            allowed = min(budget["k"], pairs)
        elif "ratio" in budget:
            allowed = math.floor(budget["ratio"] * pairs)
        else:
            allowed = min(math.floor(budget["per_node"] * n), pairs)
        edges = (adj[b] != 0).sum().item() // (2 if symmetric else 1)
        assert edges == allowed, (b, n)
    hard = dfkd_fast.binary_concrete_adjacency(logits, num_nodes, 1.0, seed=3, symmetric=symmetric, hard=True,
                                               backend=backend, **budget)
    assert ((hard != 0) <= (adj != 0)).all()  # hard edges are kept edges that came out 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_budget_keeps_the_largest_relaxed_values(backend):
    logits = torch.randn(3, 8, 8)
    soft = dfkd_fast.binary_concrete_adjacency(logits, [8, 8, 5], 0.5, seed=9, backend=backend)
    kept = dfkd_fast.binary_concrete_adjacency(logits, [8, 8, 5], 0.5, seed=9, k=6, backend=backend)
    for b in range(3):
        upper = soft[b].triu(1).flatten()
        top = upper.topk(6).values
        torch.testing.assert_close(kept[b].triu(1).flatten().sort(descending=True).values[:6], top)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("self_loops", [False, True])
def test_structure(backend, self_loops):
    num_nodes = torch.tensor([7, 3, 0, 1])
    adj = dfkd_fast.binary_concrete_adjacency(torch.randn(4, 7, 7), num_nodes, 0.3, seed=2, self_loops=self_loops,
                                              backend=backend)
    torch.testing.assert_close(adj, adj.transpose(1, 2), rtol=0, atol=0)
    valid = torch.arange(7)[None, :] < num_nodes[:, None]
    pair_valid = valid[:, :, None] & valid[:, None, :]
    assert (adj[~pair_valid] == 0).all()
    diagonal = adj.diagonal(dim1=1, dim2=2)
    torch.testing.assert_close(diagonal, valid.float() if self_loops else torch.zeros_like(diagonal))
    assert ((adj >= 0) & (adj <= 1)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", [{}, {"hard": True}, {"k": 4}, {"symmetric": False, "ratio": 0.5},
                                    {"symmetric": False, "hard": True, "self_loops": True}])
def test_gradcheck(backend, kwargs):
    logits = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda t: dfkd_fast.binary_concrete_adjacency(t, [5, 3], 0.8, seed=1, offset=4, backend=backend, **kwargs)
    if kwargs.get("hard"):  # straight-through: the gradient of the relaxed sample, checked against the soft op
        soft = {k: v for k, v in kwargs.items() if k != "hard"}
        grad_out = torch.randn(2, 5, 5, dtype=torch.float64)
        g_hard, = torch.autograd.grad(fn(logits), logits, grad_out)
        g_soft, = torch.autograd.grad(dfkd_fast.binary_concrete_adjacency(
            logits, [5, 3], 0.8, seed=1, offset=4, backend=backend, **soft), logits, grad_out)
        torch.testing.assert_close(g_hard, g_soft)
    else:
        assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", [{}, {"k": 4}, {"hard": True, "k": 4}, {"symmetric": False, "self_loops": True}])
def test_double_backward(backend, kwargs):
    """Issue 14 item 4: double backward through the C++ path returned zeros. Every backend now gives the exact
    second derivative (gradgradcheck in float64), and the backends agree."""
    logits = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda t: dfkd_fast.binary_concrete_adjacency(t, [5, 4], 0.8, seed=1, offset=4, backend=backend, **kwargs)
    assert torch.autograd.gradgradcheck(fn, (logits,))


@pytest.mark.parametrize("kwargs", [{}, {"hard": True, "ratio": 0.5}, {"symmetric": False}])
def test_second_derivatives_agree_across_backends(kwargs):
    logits = torch.randn(3, 6, 6, dtype=torch.float64, requires_grad=True)
    weight, direction = torch.randn(3, 6, 6, dtype=torch.float64), torch.randn(3, 6, 6, dtype=torch.float64)
    results = []
    for backend in BACKENDS:
        adj = dfkd_fast.binary_concrete_adjacency(logits, [6, 4, 1], 0.6, seed=3, backend=backend, **kwargs)
        (grad,) = torch.autograd.grad((adj * weight).sum(), logits, create_graph=True)
        results.append(torch.autograd.grad((grad * direction).sum(), logits)[0])
    assert results[1].abs().sum() > 0
    torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"hard": True, "k": 3}, {"symmetric": False, "ratio": 0.3}])
def test_backends_agree(kwargs):
    logits = torch.randn(3, 9, 9, requires_grad=True)
    results = []
    for backend in BACKENDS:
        adj = dfkd_fast.binary_concrete_adjacency(logits, [9, 4, 1], 0.6, seed=21, offset=1, backend=backend, **kwargs)
        results.append((adj, torch.autograd.grad((adj * torch.arange(81.0).view(9, 9)).sum(), logits)[0]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_edges", [None, 4, 50])
def test_adjacency_to_pyg_roundtrip(max_edges):
    num_nodes = [5, 2, 0, 4]
    logits = torch.randn(4, 5, 5, requires_grad=True)
    adj = dfkd_fast.binary_concrete_adjacency(logits, num_nodes, 0.5, seed=4, k=max_edges)
    edge_index, edge_weight, batch = dfkd_fast.adjacency_to_pyg(adj, num_nodes, max_edges=max_edges)
    assert batch.tolist() == [0] * 5 + [1] * 2 + [3] * 4
    if max_edges is not None:
        assert edge_index.shape == (2, 2 * 4 * min(max_edges, 10))  # fixed size: no data-dependent shape
    dense = torch.zeros(11, 11).index_put((edge_index[0], edge_index[1]), edge_weight, accumulate=True)
    starts = [0, 5, 7, 7]
    for b, n in enumerate(num_nodes):
        block = dense[starts[b]:starts[b] + n, starts[b]:starts[b] + n]
        torch.testing.assert_close(block, adj[b, :n, :n])
    edge_weight.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_adjacency_to_pyg_matches_pyg_dense_to_sparse():
    utils = pytest.importorskip("torch_geometric.utils")
    adj = dfkd_fast.binary_concrete_adjacency(torch.randn(3, 6, 6), [6, 4, 2], 0.5, seed=8, hard=True)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 2])[:, None]
    expected_index, expected_weight = utils.dense_to_sparse(adj, mask)
    edge_index, edge_weight, _ = dfkd_fast.adjacency_to_pyg(adj, [6, 4, 2])
    ours = sorted(zip(edge_index[0].tolist(), edge_index[1].tolist(), edge_weight.tolist()))
    theirs = sorted(zip(expected_index[0].tolist(), expected_index[1].tolist(), expected_weight.tolist()))
    assert ours == theirs


def test_module_stream_resumes_from_state_dict():
    sampler = BinaryConcreteAdjacency(0.5, seed=13, k=3)
    logits = torch.randn(2, 6, 6)
    first = sampler(logits, [6, 6])
    assert not torch.equal(sampler(logits, [6, 6]), first)  # a new offset each call
    resumed = BinaryConcreteAdjacency(0.5, seed=0, k=3)
    resumed.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(resumed(logits, [6, 6]), sampler(logits, [6, 6]), rtol=0, atol=0)


def test_compile_fullgraph_matches_eager():
    logits = torch.randn(2, 6, 6, requires_grad=True)
    num_nodes = torch.tensor([6, 4])
    fn = lambda t: dfkd_fast.binary_concrete_adjacency(t, num_nodes, 0.5, seed=3, k=4)
    compiled = torch.compile(fn, fullgraph=True)
    got, expected = compiled(logits), fn(logits)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), logits)[0],
                               torch.autograd.grad(expected.sum(), logits)[0])


def test_module_shared_by_threads_draws_distinct_streams(monkeypatch):
    """Issue 15 item 9: threads sharing a sampler read the same offset (read, sample, then increment). Sampling is
    slowed down here so that the old order loses the race every time."""
    import dfkd_fast.nn.binary_concrete as module

    sample = module.binary_concrete_adjacency

    def slow(*args, **kwargs):
        time.sleep(0.002)  # another thread runs here
        return sample(*args, **kwargs)

    monkeypatch.setattr(module, "binary_concrete_adjacency", slow)
    sampler = BinaryConcreteAdjacency(0.5, seed=3)
    logits = torch.randn(2, 6, 6)
    with ThreadPoolExecutor(4) as pool:
        samples = list(pool.map(lambda _: sampler(logits, [6, 5]), range(16)))
    assert sampler.offset == 16
    expected = [sample(logits, [6, 5], 0.5, seed=3, offset=o) for o in range(16)]
    used = sorted(next(o for o, e in enumerate(expected) if torch.equal(s, e)) for s in samples)
    assert used == list(range(16))  # every offset exactly once


def test_module_deep_copies():
    sampler = BinaryConcreteAdjacency(0.5, seed=3)
    sampler(torch.randn(1, 4, 4), [4])
    assert copy.deepcopy(sampler).offset == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budget", [{}, {"k": 3}, {"ratio": 0.5}])
def test_empty_batch(backend, budget):
    """Issue 15 item 10: the reference crashed for B = 0 with a budget."""
    logits = torch.randn(0, 5, 5, requires_grad=True)
    adj = dfkd_fast.binary_concrete_adjacency(logits, [], 0.5, seed=1, backend=backend, **budget)
    assert adj.shape == (0, 5, 5)
    adj.sum().backward()
    assert logits.grad.shape == (0, 5, 5)


@pytest.mark.parametrize("max_edges", [None, 0, 5])
def test_adjacency_to_pyg_without_any_node(max_edges):
    """Issue 15 item 12: only empty graphs with max_edges gave edges to node 0 of a batch with no node."""
    adj = torch.zeros(3, 4, 4, requires_grad=True)
    edge_index, weight, batch = dfkd_fast.adjacency_to_pyg(adj, [0, 0, 0], max_edges=max_edges)
    assert edge_index.shape == (2, 0) and weight.shape == (0,) and batch.shape == (0,)
    assert edge_index.dtype == batch.dtype == torch.int64
    weight.sum().backward()  # still part of the graph
    nn_pyg = pytest.importorskip("torch_geometric.nn")
    assert nn_pyg.GCNConv(3, 2)(torch.zeros(0, 3), edge_index, weight).shape == (0, 2)


LG = torch.randn(2, 4, 4)
BAD_INPUTS = [
    (lambda: dfkd_fast.binary_concrete_adjacency(LG[:, :3], [4, 4]), ValueError, "must be square"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG[0], [4]), ValueError, "'logits' must have 3 dimensions"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG.long(), [4, 4]), TypeError, "'logits' must have dtype"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 5]), ValueError, "node counts in \\[0, 4\\]"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4]), ValueError, "one count per graph"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, torch.tensor([4.0, 4.0])), TypeError, "'num_nodes' must have"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], 0.0), ValueError, "'tau' must be a finite number > 0"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], k=-1), ValueError, "'k' must be in \\[0"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], ratio=1.5), ValueError, "'ratio'"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], k=2, ratio=0.5), ValueError, "at most one of 'k'"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], ratio=0.5, per_node=1.0), ValueError,
     "at most one of 'k', 'ratio' and 'per_node', got ratio=0.5 and per_node=1.0"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], per_node=-1.0), ValueError, "'per_node' must be"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], per_node=2.0**31), ValueError,
     "'per_node' must be a float in \\[0, 2\\*\\*31\\), got 2147483648.0"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], seed=-1), ValueError, "'seed'"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], offset=2**64), ValueError, "'offset'"),
    (lambda: dfkd_fast.adjacency_to_pyg(LG, [4, 4], max_edges=-2), ValueError, "'max_edges'"),
    # issue 15 item 13: counts on another device than the data; a tau that is 0 (or inf) in float32
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, torch.tensor([4, 4], device="meta")), ValueError,
     "'num_nodes' is on meta but 'logits' is on cpu"),
    (lambda: dfkd_fast.adjacency_to_pyg(LG, torch.tensor([4, 4], device="meta")), ValueError,
     "'num_nodes' is on meta but 'adj' is on cpu"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG, [4, 4], 1e-300), ValueError,
     "'tau' = 1e-300 is not a normal float32"),
    (lambda: dfkd_fast.binary_concrete_adjacency(LG.half(), [4, 4], 1e300), ValueError, "'tau' = 1e\\+300"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
