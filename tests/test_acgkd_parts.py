"""ACGKD's parts: pseudo-graphs under the budget, curriculum, losses, adversarial temperature, GFKD's ARM."""

import math

import pytest
import torch
import torch.nn.functional as F

from dfkd_fast.acgkd import losses
from dfkd_fast.acgkd.curriculum import Curriculum, difficulty
from dfkd_fast.acgkd.gfkd import BernoulliGraphs, arm_gradient
from dfkd_fast.acgkd.pseudo_graphs import PseudoGraphs, annealed_tau, feature_entropy
from dfkd_fast.models.gnn import build_gnn


def off_diagonal_edges(adj, mask):
    eye = torch.eye(adj.shape[1], dtype=torch.bool)
    pairs = mask[:, :, None] & mask[:, None, :] & ~eye
    return ((adj != 0) & pairs).sum((1, 2)), ((adj != 0) & ~pairs & ~eye).sum()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("budget", [{"xi": 0.1}, {"xi": 0.5}, {"edge_budget": 7}, {"mean_degree": 2.0},
                                    {"mean_degree": 3.0, "xi": 0.1}, {"mean_degree": 2.0, "edge_budget": 7}])
@pytest.mark.parametrize("straight_through", [True, False])
def test_budget_bounds_the_edges_of_every_pseudo_graph(symmetric, budget, straight_through):
    graphs = PseudoGraphs(40, 4, 3, min_nodes=5, max_nodes=23, init_density=0.9, symmetric=symmetric,
                          straight_through=straight_through, seed=3, **{"xi": None, **budget})
    n = graphs.num_nodes
    pairs = n * (n - 1) // (2 if symmetric else 1)
    if "edge_budget" in budget:  # the precedence: an edge count, else xi, else the mean degree
        limit = torch.full_like(n, budget["edge_budget"])
    elif "xi" in budget:
        limit = torch.floor(budget["xi"] * pairs.double()).long()
    else:  # mean_degree * n / 2 edges; a directed graph's mean out-degree is the mean degree
        limit = torch.floor(budget["mean_degree"] * n.double() / (2 if symmetric else 1)).long()
    for draw in (graphs.sample(tau=0.5), graphs.hard_sample()):
        per_graph, outside = off_diagonal_edges(draw.adj.detach(), draw.mask)
        entries = per_graph // 2 if symmetric else per_graph
        assert outside == 0  # nothing between padding slots
        assert (entries <= limit).all()
        assert (entries == torch.minimum(limit, pairs)).any()  # dense init: the budget binds
        if symmetric:
            torch.testing.assert_close(draw.adj, draw.adj.transpose(1, 2))
        # one self-loop per valid node, none on padding
        diag = draw.adj.diagonal(dim1=1, dim2=2)
        torch.testing.assert_close(diag, draw.mask.to(diag.dtype))


@pytest.mark.parametrize("budget, edges", [({}, lambda n: n), ({"mean_degree": 3.0}, lambda n: 3 * n // 2),
                                           ({"xi": 0.1}, lambda n: n * (n - 1) // 20)])
def test_budget_defaults_to_the_trainers(budget, edges):
    """Used directly, the class budgets as the trainer does: mean degree 2 unless xi (or mean_degree) is given."""
    graphs = PseudoGraphs(12, 4, 2, init_density=0.9, seed=5, **budget)
    draw = graphs.hard_sample()
    per_graph, _ = off_diagonal_edges(draw.adj, draw.mask)
    assert per_graph.tolist() == [2 * edges(int(n)) for n in graphs.num_nodes]


def test_without_budget_density_follows_the_logits():
    graphs = PseudoGraphs(30, 4, 2, xi=None, mean_degree=None, init_density=0.2, seed=0)
    draw = graphs.hard_sample()
    per_graph, _ = off_diagonal_edges(draw.adj, draw.mask)
    n = graphs.num_nodes
    density = per_graph.sum() / (n * (n - 1)).sum()
    assert 0.15 < float(density) < 0.35


def test_sampler_stream_advances_and_replays():
    a = PseudoGraphs(6, 3, 2, seed=1)
    b = PseudoGraphs(6, 3, 2, seed=1)
    first, second = a.sample(), a.sample()
    assert not torch.equal(first.adj, second.adj)
    torch.testing.assert_close(b.sample().adj, first.adj)
    b.load_state_dict(a.state_dict())  # the offset is saved: b now continues a's stream
    torch.testing.assert_close(b.sample().adj, a.sample().adj)


def test_sample_is_differentiable_in_both_logits():
    graphs = PseudoGraphs(5, 3, 2, seed=2, hard_features=True)
    draw = graphs.sample(index=torch.tensor([0, 3]))
    assert draw.x.shape[0] == draw.adj.shape[0] == 2
    # hard_features: one-hot forward (what the student sees), softmax gradient backward
    assert set(draw.x.detach().unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(draw.x.detach().sum(-1), torch.ones(draw.x.shape[:2]))
    (draw.adj.sum() + (draw.x * torch.arange(3.0)).sum()).backward()
    assert graphs.edge_logits.grad[[0, 3]].abs().sum() > 0
    assert graphs.edge_logits.grad[[1, 2, 4]].abs().sum() == 0
    assert graphs.feature_logits.grad[0].abs().sum() > 0


def test_annealing_and_entropy():
    assert annealed_tau(0, 100, 1.0, 0.25) == 1.0
    assert math.isclose(annealed_tau(99, 100, 1.0, 0.25), 0.25)
    assert math.isclose(annealed_tau(49.5, 100, 1.0, 0.25), 0.5)
    assert annealed_tau(10, 100, 0.7, None) == 0.7
    x = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.3, 0.7]]])
    mask = torch.tensor([[True, True, False]])
    assert math.isclose(float(feature_entropy(x, mask)), math.log(2) / 2, rel_tol=1e-6)


def test_curriculum_orders_and_paces():
    graphs = PseudoGraphs(10, 3, 2, seed=4)
    teacher = build_gnn("gcn-3-8", 3, 2).eval()
    size = Curriculum.build("size", graphs, teacher, epochs=10, start=0.3, ramp=0.5)
    assert (graphs.num_nodes[size.order].diff() >= 0).all()
    assert size.pool(0).numel() == 3 and size.pool(5).numel() == 10 and size.pool(9).numel() == 10
    assert size.pool(2).numel() == math.ceil((0.3 + 0.7 * 2 / 5) * 10)
    dens = difficulty("density", graphs, teacher)
    assert dens.shape == (10,) and ((dens > 0) & (dens < 1)).all()
    conf = Curriculum.build("confidence", graphs, teacher, 10, 0.3, 0.5)
    assert sorted(conf.order.tolist()) == list(range(10))
    none = Curriculum.build("none", graphs, teacher, 10, 0.3, 0.5)
    assert none.pool(0).numel() == 10
    assert torch.equal(Curriculum.from_state(size.state_dict()).order, size.order)


def test_kd_loss_matches_the_formula():
    s, t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    for temp in (1.0, 2.0, torch.tensor(3.5, dtype=torch.float64)):
        expected = F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="batchmean") * temp**2
        torch.testing.assert_close(losses.kd_loss(s, t, temp), expected)


def test_adversarial_temperature_ascends_the_kd_loss():
    temp = losses.AdversarialTemperature(1.0, 10.0, init=2.0).double()
    assert math.isclose(float(temp(1.0).detach()), 2.0, rel_tol=1e-6)
    s = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    tau = temp(0.5)
    losses.kd_loss(s, t, tau).backward()
    # the plain derivative, for comparison
    theta = temp.theta.detach().clone().requires_grad_()
    losses.kd_loss(s, t, 1.0 + 10.0 * torch.sigmoid(theta)).backward()
    torch.testing.assert_close(temp.theta.grad, -0.5 * theta.grad)
    assert losses.cosine_ramp(0, 10, 1.0) == 0.0
    assert math.isclose(losses.cosine_ramp(5, 10, 1.0), 0.5)
    assert losses.cosine_ramp(30, 10, 0.8) == 0.8


def test_arm_gradient_is_unbiased():
    """Average ARM estimates of d/dphi E[f(A)] for a linear f against the exact sigma'(phi) * c."""
    phi = torch.randn(3, 4, 4, dtype=torch.float64)
    c = torch.randn(3, 4, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    estimate = sum(arm_gradient(phi, lambda a: (a * c).sum((1, 2)), gen) for _ in range(4000)) / 4000
    exact = c * torch.sigmoid(phi) * (1 - torch.sigmoid(phi))
    assert (estimate - exact).abs().max() < 0.1
    assert torch.corrcoef(torch.stack([estimate.flatten(), exact.flatten()]))[0, 1] > 0.95


def test_bernoulli_graphs_start_half_dense_and_asymmetric():
    graphs = BernoulliGraphs(20, 7, 2, seed=0)
    mask, pairs = graphs.pairs()
    edges = torch.sigmoid(graphs.structure) >= 0.5
    g = graphs.graphs(edges, torch.softmax(graphs.features, -1))
    density = ((g.adj > 0) & pairs).sum() / pairs.sum()
    assert 0.45 < float(density) < 0.55
    assert not torch.equal(g.adj, g.adj.transpose(1, 2))
    torch.testing.assert_close(g.adj.diagonal(dim1=1, dim2=2), mask.double().to(g.adj.dtype))


def degrees(adj, mask):
    eye = torch.eye(adj.shape[1], dtype=torch.bool)
    off = (adj.detach() > 0) & ~eye
    return off.sum(2), off.sum(1)  # out-degree, in-degree


@pytest.mark.parametrize("symmetric", [True, False])
def test_degree_bound_and_no_isolated_nodes(symmetric):
    """Inside the budget every degree is at most the bound; no valid node is isolated; gradients reach kept edges."""
    kw = dict(min_nodes=8, max_nodes=20, xi=0.15, symmetric=symmetric, seed=3)
    free = PseudoGraphs(16, 4, 2, **kw)
    bound = PseudoGraphs(16, 4, 2, degree_cap=1.0, **kw)
    bound.load_state_dict(free.state_dict())
    with torch.no_grad():  # a few hubs: the budget alone gives them many edges
        for g in (free, bound):
            g.edge_logits[:, :3] += 4.0
            g.edge_logits[:, :, :3] += 4.0
    a_free, a_bound = free.sample(), bound.sample()
    mask = a_free.mask
    limit = bound.degree_limits(bound.num_nodes)
    out_free, _ = degrees(a_free.adj, mask)
    out_deg, in_deg = degrees(a_bound.adj, mask)
    assert (out_free.max(1).values > limit).any()  # the old sampler exceeds the bound
    assert (out_deg <= limit[:, None]).all() and (in_deg <= limit[:, None]).all()
    assert ((a_bound.adj.detach() > 0) <= (a_free.adj.detach() > 0)).all()  # a subset of the budget's edges
    if symmetric:
        torch.testing.assert_close(a_bound.adj, a_bound.adj.transpose(1, 2))
    # with isolated nodes joined: none left, and the added edges are constants
    joined = PseudoGraphs(16, 4, 2, degree_cap=1.0, connect_isolated=True, **kw)
    joined.load_state_dict(bound.state_dict())
    a_joined = joined.sample()
    out_j, in_j = degrees(a_joined.adj, mask)
    assert ((out_j + in_j)[mask] > 0).all() and ((out_deg + in_deg)[mask] == 0).any()
    a_joined.adj.sum().backward()
    grad = joined.edge_logits.grad
    assert grad.abs().sum() > 0
    torch.testing.assert_close(torch.diagonal(a_joined.adj, dim1=1, dim2=2), mask.float())  # self-loops kept
    # defaults off: the sampler's graphs unchanged
    plain = PseudoGraphs(16, 4, 2, **kw)
    plain.load_state_dict(free.state_dict())
    plain.sampler.offset = 0
    free.sampler.offset = 0
    torch.testing.assert_close(plain.sample().adj, free.sample().adj, rtol=0, atol=0)


class ByNodeCount(torch.nn.Module):
    """A stand-in teacher: class 1 for graphs whose node count is a multiple of 3 (about a third), else class 0."""

    def forward(self, graphs):
        one = (graphs.mask.sum(1) % 3 == 0).float()
        return torch.stack([1 - one, one], 1) * 4


def test_balanced_curriculum_pools_hold_both_classes():
    graphs = PseudoGraphs(40, 3, 2, seed=5)
    teacher = ByNodeCount()
    classes = (graphs.num_nodes % 3 == 0).long()
    balanced = Curriculum.build("size", graphs, teacher, 10, 0.3, 0.5, balanced=True, count=36)
    assert sorted(balanced.order.tolist()) == list(range(36))  # the held-out graphs 36..39 left out
    counts = torch.bincount(classes[:36], minlength=2)
    assert counts.min() >= 5 and counts.max() >= 2 * counts.min(), counts  # imbalanced, both present
    for size in range(2, 2 * int(counts.min()) + 1):
        prefix = torch.bincount(classes[balanced.order[:size]], minlength=2)
        assert (prefix.max() - prefix.min()) <= 1, (size, prefix)
    for c in range(2):  # within each class still easy (small) first
        members = balanced.order[classes[balanced.order] == c]
        assert (graphs.num_nodes[members].diff() >= 0).all()
    plain = Curriculum.build("size", graphs, teacher, 10, 0.3, 0.5)
    assert plain.order.numel() == 40 and (graphs.num_nodes[plain.order].diff() >= 0).all()


def test_feature_losses():
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    n = torch.tensor([3, 5, 7, 9, 11])
    torch.testing.assert_close(losses.feature_loss(s, t, "sum"), F.mse_loss(s, t))
    torch.testing.assert_close(losses.feature_loss(s, t, "mean", n), F.mse_loss(s / n[:, None], t / n[:, None]))
    cos = losses.feature_loss(s, t, "cosine")
    torch.testing.assert_close(cos, (1 - F.cosine_similarity(s, t)).mean())
    torch.testing.assert_close(losses.feature_loss(7 * s, 3 * t, "cosine"), cos)  # scale-free
    assert losses.feature_loss(t, t, "cosine").abs() < 1e-6
    with pytest.raises(ValueError, match="kind"):
        losses.feature_loss(s, t, "l1")


def test_pictures_have_a_legend(tmp_path):
    from PIL import Image

    from dfkd_fast.acgkd.pictures import LEGEND_ROW, PALETTE, draw_graphs, legend_entries

    graphs = PseudoGraphs(5, 3, 2, min_nodes=4, max_nodes=7, seed=1).hard_sample()
    path = draw_graphs(graphs, tmp_path / "p.png", cell=100, columns=4)
    image = Image.open(path).convert("RGB")
    assert image.size[1] > 2 * 100  # the legend lies below the two rows of graphs
    legend = image.crop((0, 200, image.size[0], image.size[1]))
    colours = {legend.getpixel((x, y)) for x in range(legend.size[0]) for y in range(legend.size[1])}
    assert all(PALETTE[k] in colours for k in range(3))  # one swatch per node type
    assert [label for _, label in legend_entries(3)] == ["node type 0", "node type 1", "node type 2"]
    assert LEGEND_ROW > 0
    with pytest.raises(ValueError, match="type_names"):
        draw_graphs(graphs, tmp_path / "q.png", type_names=["C", "N"])
