"""Input validation shared by the functional ops.

Every check raises before any kernel runs, with a message that names the function, the argument, what was expected
and what was given. Checks that need the data (label range, finiteness) run only where they cost no device sync and
no graph break: on CPU tensors, outside of ``torch.compile`` tracing.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(
    fn: str,
    name: str,
    value: object,
    *,
    ndim: int | Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
) -> torch.Tensor:
    """Check that ``value`` is a tensor of an allowed rank and dtype."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(
                f"{fn}: argument '{name}' must have {want} dimensions, got shape {tuple(value.shape)}"
            )
    if dtypes is not None and value.dtype not in dtypes:
        raise TypeError(f"{fn}: argument '{name}' must have dtype in ({_names(dtypes)}), got {value.dtype}")
    return value


def shape(fn: str, name: str, value: torch.Tensor, expected: Sequence[int], what: str = "") -> None:
    if tuple(value.shape) != tuple(expected):
        hint = f" ({what})" if what else ""
        raise ValueError(f"{fn}: argument '{name}' must have shape {tuple(expected)}{hint}, got {tuple(value.shape)}")


def same_device(fn: str, reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, value in others.items():
        if value is not None and value.device != reference.device:
            raise ValueError(
                f"{fn}: argument '{name}' is on {value.device} but '{reference_name}' is on {reference.device}; "
                "move them to the same device"
            )


def positive(fn: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: argument '{name}' must be a float, got {type(value).__name__}")
    # comparisons, not math.isfinite: under torch.compile(dynamic=True) a float argument is a SymFloat
    if not 0 < value < math.inf:  # also false for NaN
        raise ValueError(f"{fn}: argument '{name}' must be a finite number > 0, got {value}")
    return float(value)


def number_in(fn: str, name: str, value: object, low: float, high: float, interval: str) -> float:
    """A float (or int) in ``interval``, written as it is shown, e.g. "[0, 1]" or "[0, 2**31)" (a ")" excludes
    ``high``); NaN fails both comparisons."""
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not (low <= value < high if interval.endswith(")") else low <= value <= high):
        raise ValueError(f"{fn}: argument '{name}' must be a float in {interval}, got {value!r}")
    return float(value)


def integer(fn: str, name: str, value: object, *, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: argument '{name}' must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{fn}: argument '{name}' must be {bound}, got {value}")
    return value


def choice(fn: str, name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ValueError(f"{fn}: argument '{name}' must be one of {tuple(allowed)}, got {value!r}")


def in_vmap() -> bool:
    """Whether the call runs under ``torch.func.vmap`` (whose batched tensors cannot be read with ``.item()``)."""
    if torch.compiler.is_compiling():
        return False
    functorch = torch._C._functorch  # private, but what torch.func itself reads; guarded for other versions
    stack = (functorch.get_interpreter_stack() if hasattr(functorch, "get_interpreter_stack") else None) or ()
    return any(level.key() == functorch.TransformType.Vmap for level in stack)


def not_expanded(fn: str, name: str, value: torch.Tensor) -> None:
    """A tensor updated in place must not have several elements in one memory location (an ``expand()``ed view)."""
    if value.numel() > 1 and 0 in value.stride():
        raise ValueError(
            f"{fn}: argument '{name}' is updated in place but is an expanded (stride-0) view with shape "
            f"{tuple(value.shape)} and stride {value.stride()}; pass a tensor that owns its elements (e.g. .clone())"
        )


def can_inspect_values(*tensors: torch.Tensor) -> bool:
    """Whether reading tensor data is free: CPU tensors, not under torch.compile tracing nor torch.func.vmap."""
    if torch.compiler.is_compiling() or in_vmap():
        return False
    return all(t.device.type == "cpu" for t in tensors)


def labels(fn: str, name: str, value: object, length: int, num_classes: int | None = None) -> torch.Tensor:
    """Check a 1-D integer label tensor of a given length and, where free, its range [0, num_classes)."""
    t = tensor(fn, name, value, ndim=1, dtypes=INDEX_DTYPES)
    if t.shape[0] != length:
        raise ValueError(f"{fn}: argument '{name}' must have length {length}, got shape {tuple(t.shape)}")
    if num_classes is not None and t.numel() and can_inspect_values(t):
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"{fn}: argument '{name}' must hold class ids in [0, {num_classes}), found {bad}")
    return t


def finite(fn: str, name: str, value: torch.Tensor) -> None:
    if value.numel() and can_inspect_values(value):
        # min and max propagate NaN and show +-inf: one reduction pass, ~10x cheaper than isfinite(value).all().
        low, high = torch.aminmax(value.detach())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{fn}: argument '{name}' contains NaN or infinite values")
