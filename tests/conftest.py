"""Fixtures shared by the test suites (the environment itself is set up by the root conftest.py)."""

import os

import pytest
import torch

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "dfkd", max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    settings.load_profile("dfkd")
except ImportError:  # hypothesis is a dev extra
    pass

SHARED_DATA = os.environ.get(
    "DFKD_FAST_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> str:
    """Path of ../shared/data (real datasets and teachers); a test that needs it skips when it is absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def tiny_demos(monkeypatch):
    """Both demos of ``dfkd-fast demo --quick`` shrunk to a few seconds (their code paths unchanged); returns the
    graph demo module."""
    pytest.importorskip("torch_geometric")
    import dataclasses

    from dfkd_fast.acgkd import demo as graph_demo
    from dfkd_fast.cpsc import demo as image_demo

    monkeypatch.setitem(graph_demo.QUICK, "teacher_epochs", 2)
    monkeypatch.setitem(graph_demo.QUICK, "iterations", 2)
    monkeypatch.setitem(graph_demo.QUICK, "epochs", 1)
    quick_config = image_demo.demo_config
    monkeypatch.setattr(image_demo, "demo_config", lambda quick=False: dataclasses.replace(
        quick_config(True), batch_size=8, ngf=8, nz=16, epochs=1, epoch_itrs=1))
    train = image_demo.train_classifier
    monkeypatch.setattr(image_demo, "train_classifier", lambda *a, **k: train(*a, **{**k, "epochs": 1}))
    return graph_demo


@pytest.fixture
def image_teacher(tmp_path) -> str:
    """An (untrained) small_cnn_half checkpoint for the 8x8 digits: the teacher the CLI run tests distil from."""
    from dfkd_fast.cpsc.teacher import checkpoint_record
    from dfkd_fast.data.images import dataset_info
    from dfkd_fast.models import build_model

    data = dataset_info("digits")
    path = tmp_path / "image_teacher.pt"
    torch.save(checkpoint_record(build_model("small_cnn_half", 10, in_channels=1), "small_cnn_half", data,
                                 (data.mean, data.std), None), path)
    return str(path)


@pytest.fixture(scope="module")
def graph_teacher(tmp_path_factory) -> str:
    """A gcn-3-16 teacher trained for 2 epochs on the embedded motif graphs (one per test module)."""
    from dfkd_fast.cli import main

    out = tmp_path_factory.mktemp("graph_teacher")
    assert main(["teacher", "--task", "graph", "--dataset", "motifs", "--model", "gcn-3-16", "--epochs", "2",
                 "--out", str(out)]) == 0
    return str(out / "teacher.pt")
