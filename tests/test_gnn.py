"""GCN/GIN zoo: the dense (padded) and sparse (PyG) paths agree, and padding never reaches a BatchNorm."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from dfkd_fast.acgkd.student import GATProjector
from dfkd_fast.errors import DfkdError
from dfkd_fast.models.gnn import DenseGraphs, build_gnn, parse_spec, structure_of, to_dense
from dfkd_fast.nn import BNStatsLoss

SPECS = ["gcn-5-16", "gin-3-8", "gcn-2-4"]


def random_graphs(sizes, features=5, symmetric=False, seed=0):
    """PyG graphs with random soft edge weights (asymmetric by default), one self-loop of weight 1 per node."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for n in sizes:
        w = torch.rand(n, n, generator=gen, dtype=torch.float64) * (torch.rand(n, n, generator=gen) < 0.4)
        if symmetric:
            w = torch.triu(w, 1) + torch.triu(w, 1).T
        w.fill_diagonal_(1.0)
        index = w.nonzero().T
        x = torch.randn(n, features, generator=gen, dtype=torch.float64)
        graphs.append(Data(x=x, edge_index=index, edge_weight=w[index[0], index[1]], y=torch.tensor([0])))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("train", [False, True])
def test_dense_and_sparse_paths_agree(spec, train):
    batch = random_graphs([1, 7, 13, 2, 5])  # awkward sizes, a single-node graph included
    model = build_gnn(spec, 5, 3).double().train(train)
    dense = to_dense(batch)
    x_s = batch.x.clone().requires_grad_()
    w_s = batch.edge_weight.clone().requires_grad_()
    torch.manual_seed(1)  # the same dropout mask on the logits
    out_s = model(Batch(x=x_s, edge_index=batch.edge_index, edge_weight=w_s, batch=batch.batch, ptr=batch.ptr))
    x_d, adj_d = dense.x.clone().requires_grad_(), dense.adj.clone().requires_grad_()
    torch.manual_seed(1)
    out_d = model(DenseGraphs(x_d, adj_d, dense.mask))
    torch.testing.assert_close(out_d, out_s, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out_s)
    gx_s, gw_s = torch.autograd.grad(out_s, (x_s, w_s), g)
    gx_d, gadj_d = torch.autograd.grad(out_d, (x_d, adj_d), g)
    torch.testing.assert_close(gx_d[dense.mask], gx_s, rtol=1e-9, atol=1e-10)
    src, dst = batch.edge_index
    b = batch.batch[src]
    i, j = src - batch.ptr[b], dst - batch.ptr[b]  # local indices: adj[b, i, j] is the edge i -> j
    torch.testing.assert_close(gadj_d[b, i, j], gw_s, rtol=1e-9, atol=1e-10)


def test_dense_and_sparse_agree_on_real_graphs(shared_data):
    from dfkd_fast.data.graphs import load_tu

    dataset = load_tu(f"{shared_data}/TU", "MUTAG")
    batch = Batch.from_data_list(dataset.graphs[:20])
    model = build_gnn("gcn-5-64", dataset.num_features, 2).eval()
    torch.testing.assert_close(model(to_dense(batch)), model(batch), rtol=1e-4, atol=1e-4)


def test_gat_projector_dense_and_sparse_agree():
    batch = random_graphs([4, 9, 1], features=6, seed=3)
    proj = GATProjector(6, 10).double()
    h, s_sparse = structure_of(batch)
    h_d, s_dense = structure_of(to_dense(batch))
    torch.testing.assert_close(s_dense.pool(proj(h_d, s_dense)), s_sparse.pool(proj(h, s_sparse)))


@pytest.mark.parametrize("spec", ["gcn-3-8", "gin-3-8"])
def test_masked_batchnorm_ignores_padding(spec):
    """Garbage in padded slots changes neither outputs, nor BN running statistics, nor the BN-statistics loss."""
    batch = random_graphs([3, 6, 4], seed=5)
    tight = to_dense(batch)
    padded = to_dense(batch, max_nodes=11)
    pad = ~padded.mask
    x = padded.x.masked_fill(pad[:, :, None], 1e3)
    adj = padded.adj + 7.0 * (pad[:, :, None] | pad[:, None, :])  # edges into and out of padding
    results = []
    for graphs in (tight, DenseGraphs(x, adj, padded.mask)):
        torch.manual_seed(0)  # the same initial weights for both batches
        model = build_gnn(spec, 5, 2, dropout=0.0).double().train()
        out = model(graphs)
        stats = [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
                 if isinstance(m, torch.nn.BatchNorm1d)]
        bn = BNStatsLoss(model.eval())
        model(graphs)
        results.append((out, stats, bn()))
    (out_a, stats_a, bn_a), (out_b, stats_b, bn_b) = results
    torch.testing.assert_close(out_b, out_a)
    for (ma, va), (mb, vb) in zip(stats_a, stats_b):
        torch.testing.assert_close(mb, ma)
        torch.testing.assert_close(vb, va)
    torch.testing.assert_close(bn_b, bn_a)


def test_bn_sees_valid_nodes_only():
    """The BatchNorm input is the flat tensor of valid nodes: its count is the number of real nodes."""
    batch = random_graphs([2, 5], seed=2)
    seen = []
    model = build_gnn("gcn-3-4", 5, 2).double()
    model.norms[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    model(to_dense(batch, max_nodes=9))
    assert seen == [7]


def test_state_dict_names_follow_gfkd():
    gcn = build_gnn("gcn-5-64", 7, 2)
    assert gcn.state_dict()["gcnlayers.0.weight"].shape == (7, 64)  # (in, out) as DGL's GraphConv
    assert {f"norms.{i}.running_mean" for i in range(4)} <= set(gcn.state_dict())
    assert gcn.state_dict()["linears_prediction.weight"].shape == (2, 64)
    gin = build_gnn("gin-3-32", 7, 2)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in gin.modules()) == 4  # two per GIN layer
    assert "ginlayers.1.apply_func.mlp.linears.0.weight" in gin.state_dict()


def test_parse_spec():
    assert parse_spec("GIN-3-32") == ("gin", 3, 32)
    for bad in ("gat-3-32", "gcn-1-32", "gcn-3", "gcn-3-0"):
        with pytest.raises(DfkdError, match="gcn-L-H"):
            parse_spec(bad)
