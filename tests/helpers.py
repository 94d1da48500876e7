"""Helpers shared by the test suites (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import math

import torch


def rel_err(x: torch.Tensor, ref: torch.Tensor, floor: float = 0.0) -> float:
    """max|x - ref| / max(max|ref|, floor); 0 only for an exact match when the denominator is 0."""
    x, ref = x.detach().double(), ref.detach().double()
    assert x.shape == ref.shape and x.numel(), (tuple(x.shape), tuple(ref.shape))
    scale = max(ref.abs().max().item(), floor)
    diff = (x - ref).abs().max().item()
    if scale == 0.0:
        return math.inf if diff else 0.0
    return diff / scale


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as x in another memory layout."""
    if kind == "channels_last":
        return x.to(memory_format=torch.channels_last) if x.dim() == 4 else x
    if kind == "sliced":  # strided view: every other channel of a wider tensor, spatial dims offset by one
        wide = torch.zeros((x.shape[0], 2 * x.shape[1]) + tuple(s + 1 for s in x.shape[2:]), dtype=x.dtype)
        view = wide[:, ::2][(slice(None), slice(None)) + tuple(slice(1, None) for _ in x.shape[2:])]
        view.copy_(x)
        return view
    if kind == "transposed":  # spatial dims that do not flatten to one stride
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return x


def one_line(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI on ``argv``: it must fail with exit 2 and a one-line ``dfkd-fast: error:`` holding every fragment
    (warnings, a collapsed tiny student's say, may precede it)."""
    from dfkd_fast.cli import main

    assert main(argv) == 2
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not line.startswith("dfkd-fast: warning:"))
    assert err.startswith("dfkd-fast: error:") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
