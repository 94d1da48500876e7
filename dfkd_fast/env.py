"""``dfkd-fast env``: what is installed, what can run, and a check of every op on every backend.

The check runs each op once, forward and backward, on every device and backend that can run it here, and compares
loss/output and input gradients with the reference backend (float32, relative error).
"""

from __future__ import annotations

import argparse
import platform
from typing import Callable

import torch

import dfkd_fast
from dfkd_fast import _backend


def report() -> list[tuple[str, str]]:
    ext = _backend.extension()
    rows = [
        ("dfkd_fast", dfkd_fast.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch CUDA", str(torch.version.cuda)),
        ("GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else "none"),
        ("triton", _triton_version()),
        ("triton interpreter", "on" if _backend.triton_interpreting() else "off"),
        ("dfkd_fast._C", "not built: " + str(_backend.extension_missing("cpu")) if ext is None
         else f"built ({'with' if ext.with_cuda() else 'without'} CUDA kernels)"),
        ("default backend", _backend.get_backend()),
    ]
    return rows


def _triton_version() -> str:
    missing = _backend.triton_missing()
    if missing:
        return missing
    import triton

    return triton.__version__


def _cases(device: torch.device) -> dict[str, tuple[str, Callable[[str], tuple[torch.Tensor, ...]]]]:
    """op -> (kernel kind, run(backend) -> (output, *input grads)) on fixed random inputs."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(grad)

    feats, labels = rand(16, 2, 32), torch.randint(0, 4, (16,), generator=g).to(device)
    x, cls = rand(8, 6, 5, 5), torch.randint(0, 3, (8,), generator=g).to(device)
    weight, bias = rand(3, 6), rand(3, 6)
    logits, nodes = rand(3, 9, 9), torch.tensor([9, 4, 1], device=device)

    def grads(out, *inputs):
        return (out.detach(), *torch.autograd.grad(out.sum(), inputs))

    return {
        "supcon_loss": ("triton", lambda b: grads(dfkd_fast.supcon_loss(feats, labels, backend=b), feats)),
        "class_conditional_batch_norm": ("triton", lambda b: grads(
            dfkd_fast.class_conditional_batch_norm(x, cls, weight, bias, backend=b) * x, x, weight, bias)),
        "bn_stats_loss": ("triton", lambda b: grads(
            dfkd_fast.bn_stats_loss(x, torch.zeros(6, device=device), torch.ones(6, device=device), backend=b), x)),
        "binary_concrete_adjacency": ("cpp", lambda b: grads(
            dfkd_fast.binary_concrete_adjacency(logits, nodes, 0.5, seed=1, k=7, backend=b) * logits, logits)),
    }


def check_ops() -> list[tuple[str, str, str, str]]:
    """(op, device, backend, result) for every op, device and backend."""
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        for op, (kind, run) in _cases(device).items():
            expected = run("reference")
            rows.append((op, device.type, "reference", "ok (the oracle)"))
            try:
                _backend.use_fused(op, "fused", device, kind)
            except RuntimeError as exc:
                rows.append((op, device.type, "fused", "unavailable: " + str(exc).split(": ", 2)[-1]))
                continue
            got = run("fused")
            err = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) for a, b in zip(got, expected))
            rows.append((op, device.type, "fused", f"{'ok' if err < 1e-4 else 'MISMATCH'} (max rel. err {err:.1e})"))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-check", action="store_true", help="only print versions, do not run the ops")


def run(args: argparse.Namespace) -> int:
    for key, value in report():
        print(f"{key:20s} {value}")
    if args.no_check:
        return 0
    print()
    rows = check_ops()
    for op, device, backend, result in rows:
        print(f"{op:30s} {device:5s} {backend:10s} {result}")
    return 1 if any("MISMATCH" in r[3] for r in rows) else 0
