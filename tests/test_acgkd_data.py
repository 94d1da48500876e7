"""Graph datasets: TU raw files (GFKD's conventions and split), k-fold, the embedded motif dataset."""

import numpy as np
import pytest
import torch

from dfkd_fast.data.graphs import gfkd_split, kfold_split, load_dataset, load_tu, motif_dataset
from dfkd_fast.errors import DfkdError


@pytest.mark.parametrize("name,graphs,features,nodes,edges", [
    ("MUTAG", 188, 7, 3371, 7442),
    ("PTC_MR", 344, 18, 4915, 10108),
    ("IMDB-BINARY", 1000, 65, 19773, 193062),  # no node labels: one-hot degrees
])
def test_tu_datasets_follow_gfkd_conventions(shared_data, name, graphs, features, nodes, edges):
    data = load_tu(f"{shared_data}/TU", name)
    assert (len(data), data.num_features, data.num_classes) == (graphs, features, 2)
    assert sum(g.num_nodes for g in data.graphs) == nodes
    # one self-loop per node on top of the dataset's (directed) edges
    assert sum(g.edge_index.shape[1] for g in data.graphs) == edges + nodes
    g = data.graphs[0]
    assert (g.edge_index[0] == g.edge_index[1]).sum() == g.num_nodes
    torch.testing.assert_close(g.x.sum(1), torch.ones(g.num_nodes))  # one-hot
    assert sorted({int(g.y) for g in data.graphs}) == [0, 1]


def test_gfkd_split_is_numpy_seed_29():
    train, test = gfkd_split(188)
    assert (len(train), len(test)) == (131, 57)
    expected = list(range(188))
    np.random.seed(29)
    np.random.shuffle(expected)
    assert train + test == expected
    state = np.random.get_state()[1].copy()
    gfkd_split(10)
    assert np.array_equal(np.random.get_state()[1], state)  # the caller's global stream is untouched


def test_kfold_is_a_stratified_partition():
    labels = [0] * 30 + [1] * 13
    tests = [kfold_split(labels, 5, f, seed=3)[1] for f in range(5)]
    assert sorted(i for t in tests for i in t) == list(range(43))
    for t in tests:
        assert sum(labels[i] for i in t) in (2, 3)
    train, test = kfold_split(labels, 5, 0, seed=3)
    assert not set(train) & set(test)
    with pytest.raises(DfkdError, match="--fold 5"):
        kfold_split(labels, 5, 5)


def test_motif_dataset_is_deterministic_and_balanced():
    a, b = motif_dataset(40, seed=7), motif_dataset(40, seed=7)
    assert [int(g.y) for g in a.graphs].count(1) == 20
    for ga, gb in zip(a.graphs, b.graphs):
        assert torch.equal(ga.edge_index, gb.edge_index) and torch.equal(ga.x, gb.x)
    assert not all(torch.equal(ga.x, gc.x) for ga, gc in zip(a.graphs, motif_dataset(40, seed=8).graphs))
    state = torch.get_rng_state()
    motif_dataset(4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_missing_files_and_root():
    with pytest.raises(DfkdError, match="MUTAG_A.txt"):
        load_tu("/nonexistent", "MUTAG")
    with pytest.raises(DfkdError, match="--data-root"):
        load_dataset("MUTAG", None)
