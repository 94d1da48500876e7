"""Run directories shared by the trainers: config.json, metrics.jsonl, atomic checkpoints, exact resume.

A checkpoint holds everything a step depends on (models, optimizers, RNG states, counters) and the length of
metrics.jsonl when it was written, so that a resumed run truncates what the killed run logged after its last
checkpoint and then continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from dfkd_fast.errors import DfkdError

CHECKPOINT = "checkpoint.pt"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_save`; a missing or corrupt file raises a one-line DfkdError."""
    path = Path(path)
    if not path.is_file():
        raise DfkdError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise DfkdError(f"checkpoint {path} is corrupt or not a torch checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise DfkdError(f"checkpoint {path} does not hold a dict (got {type(state).__name__})")
    return state


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RunDir:
    """One run's directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and pictures."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        if resume and not self.checkpoint_path.is_file():
            raise DfkdError(f"--resume: no checkpoint to resume in {self.path}")
        if not resume and self.checkpoint_path.is_file():
            raise DfkdError(f"{self.path} already holds a run; pass --resume to continue it, or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, config: dict) -> None:
        tmp = self.path / ".config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.path / "config.json")

    def read_config(self) -> dict:
        path = self.path / "config.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DfkdError(f"cannot read {path}: {exc}") from None

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True, default=float) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def save(self, state: dict) -> None:
        """Write the checkpoint atomically, with the RNG states and the current length of metrics.jsonl."""
        size = self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0
        atomic_save({**state, "rng": rng_state(), "metrics_bytes": size}, self.checkpoint_path)

    def load(self, map_location: str | torch.device = "cpu") -> dict:
        """Load the checkpoint, restore the RNG states and drop metrics logged after it was written."""
        state = load_checkpoint(self.checkpoint_path, map_location)
        set_rng_state(state["rng"])
        if self.metrics_path.is_file():
            with open(self.metrics_path, "r+b") as f:
                f.truncate(state.get("metrics_bytes", 0))
        return state


def progress(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
             disable: bool | None = None) -> tqdm:
    """A tqdm progress bar (hidden when stderr is not a terminal unless DFKD_FAST_PROGRESS=1)."""
    if disable is None:
        disable = os.environ.get("DFKD_FAST_PROGRESS") != "1" and not _stderr_is_tty()
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, leave=False)


def _stderr_is_tty() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False
