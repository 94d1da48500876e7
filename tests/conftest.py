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
