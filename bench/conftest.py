"""Shared machinery of the benchmark suites.

Every case times one implementation (``impl``) of one op in one mode (``fwd``, ``bwd``, ``fwd+bwd``, or ``step`` for
trainer steps) on the same inputs, and records in ``extra_info``: op, impl, mode, device, dtype, shape, peak extra
memory, achieved GB/s or TFLOP/s and the percentage of the device's roofline. ``impl`` is one of ours -- ``fused``
(the kernel), ``eager`` (the project's reference), ``compile`` (``torch.compile(reference)``) -- or the name of a
*baseline*, what a user would run instead (``pml``: pytorch-metric-learning, ``supcontrast``: the upstream N x N
loss, ``upstream``: the upstream-style module or step, ...), with a one-line ``impl_note`` saying what it is.
``bench/report.py`` prints, per op, one ratio column per baseline ("fused vs <impl>"), from any impl names.

    pytest bench/ --benchmark-autosave       # record (GPU results go under bench/results/<gpu>/)
    pytest bench/ --benchmark-compare        # compare with the last record
    pytest bench/ --benchmark-disable        # run every case once, as a test (CPU sizes on CPU)
    pytest bench/ -m key                     # on a GPU: the key cases of notes/kernels.md section 7 only

On a CPU the suites run at CPU sizes and the Triton cases skip (the interpreter is not a performance path).
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Callable, Sequence

import pytest
import torch

from dfkd_fast._backend import extension_missing

OURS = ("fused", "eager", "compile")  # the project's own implementations; every other impl is a baseline
PROVIDERS = OURS  # the older name
MODES = ("fwd", "bwd", "fwd+bwd")
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

# Published peaks: (HBM bytes/s, dense bf16 tensor-core FLOP/s, fp32 FLOP/s without tensor cores).
PEAKS = {
    "H100": (3.35e12, 989e12, 67e12),
    "H200": (4.8e12, 989e12, 67e12),
    "A100": (2.0e12, 312e12, 19.5e12),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "key: a key GPU-size case, run first by bench/gpu_session.sh (-m key)")


def key_on_gpu(*values):
    """A parametrize value marked ``key`` (bench/gpu_session.sh times these first)."""
    return pytest.param(*values, marks=pytest.mark.key)


def device_name() -> str:
    return torch.cuda.get_device_name() if ON_GPU else "cpu"


def peaks() -> tuple[float, float, float] | None:
    name = device_name()
    return next((v for k, v in PEAKS.items() if k in name), None)


@functools.lru_cache(maxsize=None)
def measured_bandwidth() -> float | None:
    """Device-to-device copy bandwidth (bytes/s, read + write), the practical HBM ceiling."""
    if not ON_GPU:
        return None
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * 20 / (start.elapsed_time(end) / 1e3)


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def skip_unless_runnable(provider: str, kind: str = "triton") -> None:
    """Triton kernels are only benchmarked on a GPU; the C++ kernels also on CPU, and only when dfkd_fast._C is
    built: without it a "fused" case would silently time the reference fallback."""
    if provider == "fused" and kind == "triton" and not ON_GPU:
        pytest.skip("Triton kernels are benchmarked on a GPU only (the CPU interpreter is a test path)")
    if provider == "fused" and kind == "cpp" and (reason := extension_missing(DEVICE.type)):
        pytest.skip(f"NOT TIMED: {reason}; build it (pip install --no-build-isolation -e '.[dev]', or "
                    "python setup.py build_ext --inplace) to benchmark the fused C++/CUDA kernels")


def pytest_report_header(config):
    reason = extension_missing(DEVICE.type)
    if reason:
        return [f"dfkd_fast: {reason}: every fused C++/CUDA benchmark case is SKIPPED (not timed as the reference)"]
    return None


_compiled: dict[Callable, Callable] = {}
# The bwd mode re-runs one retained backward, which a compiled backward with donated buffers refuses (whether it
# donates depends on what compiled first in the worker, so the failure came and went with the test order).
import torch._functorch.config as _functorch_config  # noqa: E402

if hasattr(_functorch_config, "donated_buffer"):
    _functorch_config.donated_buffer = False


def provider_fn(provider: str, fused: Callable, reference: Callable) -> Callable:
    """The callable a provider times; torch.compile(reference) is cached so that all modes share one compile."""
    if provider == "fused":
        return fused
    if provider == "eager":
        return reference
    if reference not in _compiled:
        _compiled[reference] = torch.compile(reference)
    return _compiled[reference]


def _make_step(fn: Callable, inputs: Sequence[torch.Tensor], mode: str) -> Callable[[], object]:
    grads_of = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if mode == "fwd":
        def step():
            out = fn(*inputs)
            sync()
            return out
        return step
    out = fn(*inputs)
    grad_out = torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out)
    if mode == "bwd":
        def step():
            res = torch.autograd.grad(out, grads_of, grad_out, retain_graph=True)
            sync()
            return res
        return step

    def step():
        res = torch.autograd.grad(fn(*inputs), grads_of, grad_out)
        sync()
        return res
    return step


def time_op(
    benchmark,
    fn: Callable,
    inputs: Sequence[torch.Tensor],
    mode: str,
    *,
    op: str,
    shape: Sequence[int],
    impl: str | None = None,
    provider: str | None = None,
    impl_note: str | None = None,
    flops: dict[str, float] | None = None,
    bytes_moved: dict[str, float] | None = None,
    rounds: int | None = None,
) -> None:
    """Benchmark ``fn(*inputs)`` in ``mode`` and record the shared fields.

    ``flops`` / ``bytes_moved`` give the work of "fwd" and "bwd" (fwd+bwd is their sum); throughput and roofline %
    are computed from the median time. ``impl`` names the implementation (``provider`` is its older name);
    ``impl_note`` says in one line what a baseline is (the report's legend).
    """
    impl = impl or provider
    if not impl:
        raise ValueError("time_op: impl must name the implementation timed")
    step = _make_step(fn, inputs, mode)
    step()  # warm-up (and the compile of the compile provider)
    if rounds is None and not ON_GPU and not getattr(benchmark, "disabled", False):
        # small CPU cases: enough rounds for about 0.3 s, so that the median is stable
        t0 = time.perf_counter()
        step()
        rounds = max(3, min(30, int(0.3 / max(time.perf_counter() - t0, 1e-6))))
    peak = None
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    if rounds is None:
        rounds = 20 if ON_GPU else 3
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1 if ON_GPU else 0, iterations=1)
    dtype = next((t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
    record_case(benchmark, op=op, impl=impl, mode=mode, shape=shape, impl_note=impl_note,
                dtype=str(dtype).replace("torch.", ""), peak_extra_bytes=peak)
    info = benchmark.extra_info
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    if not median:
        return
    info["median_s"] = median
    pk = peaks()

    def work(table):
        if table is None:
            return None
        return table["fwd"] + table["bwd"] if mode == "fwd+bwd" else table[mode]

    if (b := work(bytes_moved)) is not None:
        info["GBps"] = b / median / 1e9
        bw = measured_bandwidth()
        if bw:
            info["pct_measured_bw"] = 100 * b / median / bw
        if pk:
            info["pct_peak_bw"] = 100 * b / median / pk[0]
    if (f := work(flops)) is not None:
        info["TFLOPs"] = f / median / 1e12
        if pk:
            peak_flops = pk[1] if dtype in (torch.bfloat16, torch.float16) else pk[2]
            info["pct_peak_flops"] = 100 * f / median / peak_flops


def record_case(benchmark, *, op: str, impl: str, mode: str, shape: Sequence[int], impl_note: str | None = None,
                **extra) -> None:
    """The keys bench/report.py groups and labels by (``provider`` duplicates ``impl`` for older readers)."""
    info = benchmark.extra_info
    info.update(op=op, impl=impl, provider=impl, mode=mode, device=device_name(), shape=list(shape),
                torch=torch.__version__, **extra)
    if impl_note:
        info["impl_note"] = impl_note


@contextlib.contextmanager
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
