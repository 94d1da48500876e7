"""GFKD checkpoints import with GFKD's class and node-label numbering mapped; graph teachers are reproducible."""

import numpy as np
import pytest
import torch

from dfkd_fast.acgkd.teacher import import_gfkd, load_teacher
from dfkd_fast.cli import main
from dfkd_fast.data.graphs import gfkd_orders, load_tu
from dfkd_fast.errors import DfkdError
from dfkd_fast.models.gnn import load_gfkd_checkpoint

# Six small graphs whose labels first appear out of sorted order: graph labels 1, -1 (GFKD: class 0 = label 1) and
# node labels 5, 2, 9 (GFKD: feature 0 = label 5). Edges are listed in both directions, as in the TU files.
GRAPHS = [  # (graph label, node labels, undirected edges)
    (1, [5, 2, 2, 9], [(0, 1), (1, 2), (2, 3)]),
    (-1, [2, 2, 5], [(0, 1), (1, 2), (0, 2)]),
    (1, [9, 5, 5, 2, 2], [(0, 1), (0, 2), (2, 3), (3, 4)]),
    (-1, [2, 9], [(0, 1)]),
    (1, [5, 5, 9], [(0, 1), (1, 2)]),
    (-1, [9, 2, 5, 2], [(0, 1), (1, 2), (2, 3), (3, 0)]),
]


@pytest.fixture(scope="module")
def tu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tu")
    raw = root / "TOY" / "raw"
    raw.mkdir(parents=True)
    edges, indicator, node_labels, start = [], [], [], 1
    for g, (_, labels, pairs) in enumerate(GRAPHS):
        indicator += [g + 1] * len(labels)
        node_labels += labels
        for i, j in pairs:
            edges += [(start + i, start + j), (start + j, start + i)]
        start += len(labels)
    (raw / "TOY_A.txt").write_text("".join(f"{i}, {j}\n" for i, j in edges))
    (raw / "TOY_graph_indicator.txt").write_text("".join(f"{g}\n" for g in indicator))
    (raw / "TOY_graph_labels.txt").write_text("".join(f"{label}\n" for label, _, _ in GRAPHS))
    (raw / "TOY_node_labels.txt").write_text("".join(f"{label}\n" for label in node_labels))
    return root


def gfkd_checkpoint(in_dim=3, hidden=8, classes=2, layers=5, seed=0) -> dict:
    """A GCN-L-H state_dict in GFKD's layout (DGL GraphConv weights [in, out]) with non-trivial BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    dims = [in_dim] + [hidden] * (layers - 1)
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        state[f"gcnlayers.{i}.weight"] = torch.randn(a, b, generator=gen)
        state[f"gcnlayers.{i}.bias"] = torch.randn(b, generator=gen)
        state[f"norms.{i}.weight"] = 1 + 0.1 * torch.randn(b, generator=gen)
        state[f"norms.{i}.bias"] = 0.1 * torch.randn(b, generator=gen)
        state[f"norms.{i}.running_mean"] = torch.randn(b, generator=gen)
        state[f"norms.{i}.running_var"] = 0.5 + torch.rand(b, generator=gen)
        state[f"norms.{i}.num_batches_tracked"] = torch.tensor(7)
    state["linears_prediction.weight"] = torch.randn(classes, hidden, generator=gen)
    state["linears_prediction.bias"] = torch.randn(classes, generator=gen)
    return state


def gfkd_forward(state: dict, node_labels: list, pairs: list, layers: int = 5) -> torch.Tensor:
    """GFKD's GCN on one graph in GFKD's own numbering, written out in plain torch (eval mode, float64)."""
    first_seen = list(dict.fromkeys(label for _, labels, _ in GRAPHS for label in labels))
    x = torch.zeros(len(node_labels), len(first_seen), dtype=torch.float64)
    x[torch.arange(len(node_labels)), torch.tensor([first_seen.index(v) for v in node_labels])] = 1
    adj = torch.eye(len(node_labels), dtype=torch.float64)  # GFKD's --self_loop
    for i, j in pairs:
        adj[i, j] = adj[j, i] = 1
    inv_sqrt = adj.sum(0).rsqrt()  # DGL 0.4 GraphConv(norm=True): in-degree ^ -1/2 on both ends
    a_hat = inv_sqrt[:, None] * adj * inv_sqrt[None, :]
    h = x
    for i in range(layers - 1):
        s = {k: v.double() for k, v in state.items() if k.startswith((f"gcnlayers.{i}.", f"norms.{i}."))}
        z = a_hat @ (h @ s[f"gcnlayers.{i}.weight"]) + s[f"gcnlayers.{i}.bias"]
        z = (z - s[f"norms.{i}.running_mean"]) / torch.sqrt(s[f"norms.{i}.running_var"] + 1e-5)
        out = torch.relu(z * s[f"norms.{i}.weight"] + s[f"norms.{i}.bias"])
        h = out + h if i > 0 else out
    return h.sum(0) @ state["linears_prediction.weight"].double().T + state["linears_prediction.bias"].double()


def test_gfkd_orders_are_first_appearance(tu_root):
    feature_order, class_order = gfkd_orders(tu_root, "TOY")
    assert feature_order == [1, 0, 2]  # GFKD's features 5, 2, 9 are dfkd_fast's 1, 0, 2 (sorted 2, 5, 9)
    assert class_order == [1, 0]  # GFKD's class 0 is label 1, dfkd_fast's class 1


def test_imported_checkpoint_predicts_as_gfkd(tu_root, tmp_path):
    state = gfkd_checkpoint()
    path = tmp_path / "ckpt_best_29.pth"
    torch.save({"model_state_dict": state, "epoch": 296, "acc": 0.8947}, path)
    model = import_gfkd(path, "TOY", tu_root).double()
    assert model.spec == "gcn-5-8"
    dataset = load_tu(tu_root, "TOY")
    class_order = gfkd_orders(tu_root, "TOY")[1]
    for (_, labels, pairs), graph in zip(GRAPHS, dataset.graphs):
        graph.x = graph.x.double()
        ours = model(graph)[0]
        expected = gfkd_forward(state, labels, pairs)
        torch.testing.assert_close(ours[class_order], expected)  # dfkd class class_order[g] = GFKD class g
    # without the mapping the same weights give other logits: the orders matter on this dataset
    plain = load_gfkd_checkpoint(state).double()
    assert not torch.allclose(plain(dataset.graphs[0])[0][class_order], gfkd_forward(state, *GRAPHS[0][1:]))


def test_import_through_the_cli(tu_root, tmp_path, capsys):
    torch.save(gfkd_checkpoint(in_dim=3), tmp_path / "ckpt.pth")
    out = tmp_path / "imported"
    assert main(["teacher", "--task", "graph", "--import", "gfkd", str(tmp_path / "ckpt.pth"), "--dataset", "TOY",
                 "--data-root", str(tu_root), "--out", str(out)]) == 0
    assert "imported GFKD gcn-5-8" in capsys.readouterr().out
    teacher, meta = load_teacher(out / "teacher.pt", "gcn-5-8")
    assert meta["dataset"] == "TOY" and meta["train_size"] == 4


def test_import_errors(tu_root, tmp_path):
    torch.save(gfkd_checkpoint(in_dim=4), tmp_path / "wide.pth")
    with pytest.raises(DfkdError, match="node features"):
        import_gfkd(tmp_path / "wide.pth", "TOY", tu_root)
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(DfkdError, match="not a GFKD GCN/GIN checkpoint"):
        import_gfkd(tmp_path / "other.pth", "TOY", tu_root)
    with pytest.raises(DfkdError, match="not found"):
        import_gfkd(tmp_path / "missing.pth", "TOY", tu_root)


def test_graph_teacher_is_reproducible(tmp_path):
    """The same --seed gives the same weights (the model is built after seeding), another seed other weights."""
    def teacher(seed, name):
        argv = ["teacher", "--task", "graph", "--dataset", "motifs", "--model", "gcn-3-8", "--epochs", "1",
                "--seed", str(seed), "--out", str(tmp_path / name)]
        assert main(argv) == 0
        return torch.load(tmp_path / name / "teacher.pt", weights_only=False)["state_dict"]

    a, b, c = teacher(3, "a"), teacher(3, "b"), teacher(4, "c")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    np.testing.assert_equal(sorted(a), sorted(c))
