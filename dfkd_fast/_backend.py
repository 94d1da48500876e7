"""Backend selection and the optional compiled extension.

Every functional op takes ``backend="auto" | "fused" | "reference"`` (``None`` = the calling thread's
:func:`use_backend` block, else the process default from :func:`set_backend` or ``DFKD_FAST_BACKEND``):

* ``reference``: the plain-PyTorch formula in :mod:`dfkd_fast.reference`, differentiated by autograd.
* ``fused``: the custom op with its fused kernel. Triton ops run natively on CUDA and under the Triton interpreter
  on CPU (``TRITON_INTERPRET=1`` set before triton is imported: slow, for testing); C++ ops run their CPU kernel on
  CPU and their CUDA kernel on CUDA. Asking for it where it cannot run raises a ``RuntimeError`` with the reason.
* ``auto``: fused where it is fast (CUDA; and the C++ CPU kernel of binary_concrete on CPU), reference elsewhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from typing import Iterator, Literal

import torch

Backend = Literal["auto", "fused", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "fused", "reference")


def _check_backend_name(name: object, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {name!r}")
    return name  # type: ignore[return-value]


_default: str = _check_backend_name(os.environ.get("DFKD_FAST_BACKEND", "auto"), "DFKD_FAST_BACKEND")
# use_backend's choice: local to the thread (a new thread starts with no override) and to the asyncio task
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("dfkd_fast_backend", default=None)


def set_backend(name: Backend) -> str:
    """Set the process-wide default backend (every thread); returns the previous one.

    Inside a ``use_backend`` block of the calling thread, that block's choice still wins until it ends.
    """
    global _default
    previous, _default = _default, _check_backend_name(name, "set_backend")
    return previous


def get_backend() -> str:
    """The default backend of the calling thread: its innermost ``use_backend`` block's, else the process default."""
    override = _override.get()
    return _default if override is None else override


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Context manager that sets the default backend for the duration of a block, in the calling thread only
    (a ``contextvars`` variable: other threads, and asyncio tasks started outside the block, keep theirs)."""
    token = _override.set(_check_backend_name(name, "use_backend"))
    try:
        yield
    finally:
        _override.reset(token)


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def triton_missing() -> str | None:
    """Why Triton cannot be used (``None`` when it can)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


@functools.lru_cache(maxsize=None)
def _load_extension():
    try:
        from dfkd_fast import _C
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"dfkd_fast._C is not available ({reason}); the C++/CUDA kernels are disabled and the reference "
            "backends are used. Rebuild with `pip install --no-build-isolation -e .` to enable them.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, reason
    return _C, None


def extension():
    """The compiled ``dfkd_fast._C`` module, or ``None`` (warns once with the reason)."""
    return _load_extension()[0]


def extension_missing(device_type: str = "cpu") -> str | None:
    """Why the C++ kernels cannot run on ``device_type`` (``None`` when they can)."""
    ext, reason = _load_extension()
    if ext is None:
        return f"dfkd_fast._C is not available ({reason})"
    if device_type == "cuda" and not ext.with_cuda():
        return "dfkd_fast._C was built without CUDA kernels (rebuild with a CUDA toolkit or FORCE_CUDA=1)"
    if device_type not in ("cpu", "cuda"):
        return f"no C++ kernel for device type {device_type!r}"
    return None


def _triton_unavailable(device_type: str) -> str | None:
    if device_type == "cuda":
        return triton_missing()
    if device_type == "cpu":
        if not triton_interpreting():
            return (
                "the Triton kernels run on CPU tensors only under the Triton interpreter: set TRITON_INTERPRET=1 "
                "in the environment before importing dfkd_fast (slow; meant for testing)"
            )
        return triton_missing()
    return f"no Triton kernel for device type {device_type!r}"


def use_fused(op: str, backend: str | None, device: torch.device, kind: Literal["triton", "cpp"]) -> bool:
    """Resolve ``backend`` for one call of ``op`` on ``device``: True = fused kernel, False = reference."""
    name = _check_backend_name(get_backend() if backend is None else backend, op)
    if name == "reference":
        return False
    reason = _triton_unavailable(device.type) if kind == "triton" else extension_missing(device.type)
    if name == "fused":
        if reason is not None:
            raise RuntimeError(f"{op}: backend='fused' is not available for {device.type} tensors: {reason}")
        return True
    # auto: the Triton kernels are only worth it on a GPU; the C++ CPU kernel beats the reference on CPU too.
    if kind == "triton" and device.type != "cuda":
        return False
    return reason is None


# torch.compile evaluates the decision once, while tracing, and bakes it into the graph. This is what
# torch.compiler.assume_constant_result does; setting its marker directly keeps `import dfkd_fast` from importing
# torch._dynamo (and with it triton, before a test or a user could set TRITON_INTERPRET).
use_fused._dynamo_marked_constant = True  # type: ignore[attr-defined]
