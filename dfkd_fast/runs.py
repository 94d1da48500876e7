"""Run directories shared by the commands: config.json, metrics.jsonl, log.txt, atomic checkpoints, exact resume.

A checkpoint holds everything a step depends on (models, optimizers, RNG states, counters) and the length of
metrics.jsonl when it was written, so that a resumed run truncates what the killed run logged after its last
checkpoint and then continues bit for bit. A run that stopped before its first checkpoint restarts from the start
(its records are dropped), so any crash leaves a directory that resumes or restarts cleanly.

Safety: a run directory is locked (``run.lock``: an ``flock`` held for the life of the run, with the holder's pid)
so that two runs never write into one directory; checkpoints are only ever read with ``torch.load(...,
weights_only=True)`` (tensors and plain containers: nothing in a file can run code), the RNG states they carry
being stored as tensors and lists; temporary files of interrupted writes are removed when the directory is next
opened; :func:`check_finite` is the divergence guard every trainer calls before it writes a record or a checkpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import math
import os
import pickle
import random
import re
import secrets
import shutil
import signal
import socket
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from dfkd_fast.errors import DfkdError, DivergenceError

try:
    import fcntl
except ImportError:  # not POSIX: the lock falls back to the pid in the lock file
    fcntl = None

CHECKPOINT = "checkpoint.pt"
LOCK = "run.lock"
LOG = "log.txt"
CURVES = "curves.png"
TMP_SUFFIX = ".tmp"
logger = logging.getLogger("dfkd_fast.run")
logger.setLevel(logging.INFO)
logger.propagate = False  # the commands print; the logger only feeds the run's log.txt

# --------------------------------------------------------------------------------------------- fault injection
_hits: dict[str, int] = {}


def _crash_due(point: str) -> bool:
    """Testing hook: ``DFKD_FAST_CRASH_AT=POINT[:N]`` makes the N-th pass (default the first) of ``POINT`` in this
    process fatal. Points: ``record`` (after a metrics line), ``record-partial`` (half a metrics line written),
    ``write:NAME`` (inside the atomic write of file NAME, before its rename), ``saved:NAME`` (after it)."""
    spec = os.environ.get("DFKD_FAST_CRASH_AT")
    if not spec:
        return False
    name, _, count = spec.rpartition(":")
    if not count.isdigit():
        name, count = spec, "1"
    if name != point:
        return False
    _hits[point] = _hits.get(point, 0) + 1
    return _hits[point] == int(count)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(point: str) -> None:
    """SIGKILL this process here when ``DFKD_FAST_CRASH_AT`` names this point (see :func:`_crash_due`)."""
    if _crash_due(point):
        _die()


# ------------------------------------------------------------------------------------------------ atomic files
def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def _write_error(path: Path, exc: BaseException) -> DfkdError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "file write failed" in reason:
        reason += " (is the disk full?)"
    return DfkdError(f"cannot write {path}: {reason}")


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file next to ``path`` (mode 0666 less the umask, like any new file), fsync,
    rename over ``path``, fsync the directory. OS errors (and torch's disk-full RuntimeError) are one-line
    DfkdErrors; a temporary file left by a crash is removed by the next :class:`RunDir` of that directory."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            crash_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, (OSError, RuntimeError)):
            raise _write_error(path, exc) from None
        raise
    crash_point(f"saved:{path.name}")
    with contextlib.suppress(OSError):  # not every filesystem can fsync a directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only, so nothing in
    the file can run code. A missing, corrupt or refused file (one that needs more, e.g. a pickled object) raises a
    one-line DfkdError."""
    path = Path(path)
    if not path.is_file():
        raise DfkdError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(r"Unsupported operand (\d+)", str(exc))
        detail = ("not a torch checkpoint of tensors" if found is None else f"it asks for {found.group(1)}"
                  if not found.group(1).isdigit() else f"pickle opcode {found.group(1)}")
        raise DfkdError(f"checkpoint {path} refused: it holds more than tensors and plain containers ({detail}); "
                        "dfkd-fast loads only with torch.load(weights_only=True), which runs no code from a file")
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise DfkdError(f"checkpoint {path} is corrupt or not a torch checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise DfkdError(f"checkpoint {path} does not hold a dict (got {type(state).__name__})")
    return state


# ---------------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """The global RNG states as tensors, lists and numbers (what ``torch.load(weights_only=True)`` reads back)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- divergence guard
def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return not isinstance(value, float) or math.isfinite(value)


def _tensors(source) -> list[torch.Tensor]:
    if isinstance(source, torch.nn.Module):
        return [t for t in (*source.parameters(), *source.buffers()) if torch.is_floating_point(t)]
    return [t for t in source if t is not None and torch.is_floating_point(t)]


def check_finite(command: str, where: str, values: Mapping[str, Any] | None = None,
                 modules: Mapping[str, Any] | None = None, flags: Mapping[str, str] | None = None,
                 default_flags: str = "the learning rates") -> None:
    """The divergence guard: a one-line :class:`DivergenceError` when a value (a loss term) or a module's tensors
    (parameters and buffers) are not finite, naming them and the flags to lower (``flags``: name -> flags).
    Called before a record or checkpoint is written; costs one device sync per call."""
    bad = [k for k, v in (values or {}).items() if v is not None and not _finite(v)]
    for name, source in (modules or {}).items():
        tensors = _tensors(source) if source is not None else []
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            bad.append(f"{name} weights")
    if not bad:
        return
    hints: list[str] = []
    for name in bad:
        for hint in (flags or {}).get(name.removesuffix(" weights"), "").split(" / "):
            if hint and hint not in hints:
                hints.append(hint)
    raise DivergenceError(f"{command}: training diverged at {where}: non-finite {', '.join(bad)}; "
                          f"lower {' / '.join(hints) or default_flags}")


@contextlib.contextmanager
def divergence_guard(command: str, where: str, modules: Mapping[str, Any], flags: Mapping[str, str] | None = None,
                     default_flags: str = "the learning rates"):
    """Turn an op's input-validation ValueError caused by non-finite weights (the NaN of a diverged step reaching
    the next step's checks) into the guard's one-line DivergenceError."""
    try:
        yield
    except ValueError:
        check_finite(command, where, None, modules, flags, default_flags)
        raise


# ----------------------------------------------------------------------------------------------- run directories
_OPEN: dict[str, "RunDir"] = {}  # resolved path -> the open RunDir of this process


def _holder_alive(holder: list[str]) -> bool:
    """Whether the pid (and host) of a lock file name a live process other than this one."""
    if not holder or not holder[0].isdigit() or int(holder[0]) == os.getpid():
        return False
    if len(holder) > 1 and holder[1] != socket.gethostname():
        return True  # another machine's process: cannot be checked, assume live
    try:
        os.kill(int(holder[0]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _release(fd: int, lock_path: Path, handler: logging.Handler | None) -> None:
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
            os.unlink(lock_path)  # still ours: a finished run leaves no lock file
    with contextlib.suppress(OSError):
        os.close(fd)
    if handler is not None:
        logger.removeHandler(handler)
        handler.close()


class RunDir:
    """One run's directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``log.txt``, ``run.lock``,
    pictures and model files.

    Opening it takes the directory's lock (a second run, or a resume of a live run, is refused in one line; the lock
    of a dead process is stale and taken over), removes temporary files of interrupted writes and, on a fresh start
    (or a ``resume`` of a run that has no checkpoint yet: it restarts, ``self.resume`` is then False), drops stale
    records. :meth:`close` releases the lock; after a failure it also removes a directory this run created that
    holds no checkpoint (nothing to resume), so a failed command leaves no empty run folder behind.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, command: str | None = None) -> None:
        self.path = Path(path)
        self.command = command
        self._created: Path | None = None  # the topmost directory this run created
        self._fd: int | None = None
        self._finalizer = None
        if resume and not self.path.is_dir():
            raise DfkdError(f"--resume: no checkpoint to resume in {self.path} (no such directory)")
        self._make_dir()
        self._key = str(self.path.resolve())
        if self._key in _OPEN:  # reopened by this process (e.g. to resume it): the new object takes the lock over
            _OPEN[self._key].close()
        try:
            self._lock()
            _OPEN[self._key] = self
            self._remove_temp_files()
            has_checkpoint = self.checkpoint_path.is_file()
            if resume and not has_checkpoint and not self.config_path.is_file():
                raise DfkdError(f"--resume: no checkpoint to resume in {self.path} (nor a config.json to restart "
                                "from)")
            if not resume and has_checkpoint:
                raise DfkdError(f"{self.path} already holds a run; pass --resume to continue it, or choose another "
                                "--out")
            self.resume = resume and has_checkpoint
            self.restarted = resume and not has_checkpoint  # stopped before its first checkpoint: start over
            if not self.resume:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.metrics_path)
            if command is not None and self.config_path.is_file() and resume:
                self._check_command(self.read_config())
            if self.restarted:
                say(f"--resume: {self.path} holds no checkpoint yet (the run stopped before its first one): "
                    "restarting it from the start")
        except BaseException:
            self.close(failed=True)
            raise

    # -- opening ---------------------------------------------------------------------------------------------
    def _make_dir(self) -> None:
        top = self.path.absolute()
        created = None
        try:
            while not top.exists():
                created, top = top, top.parent
            if not top.is_dir():
                raise DfkdError(f"--out {self.path}: {top} is a file, not a directory")
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DfkdError(f"--out {self.path}: cannot create the run directory ({exc.strerror or exc})") from None
        self._created = created

    def _lock(self) -> None:
        lock_path = self.path / LOCK
        for _ in range(10):
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise DfkdError(f"--out {self.path}: cannot create {LOCK} ({exc.strerror or exc})") from None
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            try:
                if fcntl is None:
                    raise OSError(errno.ENOLCK, "no flock on this platform")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                live = False
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    live = True
                elif exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    live = _holder_alive(holder)  # no flock here (some network filesystems): trust the pid
                else:
                    os.close(fd)
                    raise DfkdError(f"--out {self.path}: cannot lock {LOCK} ({exc.strerror})") from None
            if live:
                os.close(fd)
                who = f"process {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else \
                    "another process"
                raise DfkdError(f"{self.path} is in use by a live run ({who}, lock {lock_path}); wait for it to "
                                "end, or choose another --out")
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file between our open and our lock: lock the new one
                os.close(fd)
                continue
            # a lock file left by a dead process holds no flock: it is stale and simply taken over
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            self._fd = fd
            handler = logging.FileHandler(self.path / LOG, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            # with several directories open (a demo), a message goes to the log of the one opened last
            handler.addFilter(lambda _record, key=self._key: bool(_OPEN) and next(reversed(_OPEN)) == key)
            logger.addHandler(handler)
            self._finalizer = weakref.finalize(self, _release, fd, lock_path, handler)
            return
        raise DfkdError(f"--out {self.path}: cannot lock {LOCK} (it keeps being replaced)")

    def _remove_temp_files(self) -> None:
        for tmp in [*self.path.glob(f".*{TMP_SUFFIX}"), *self.path.glob(f"*/.*{TMP_SUFFIX}")]:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _check_command(self, config: dict) -> None:
        other = config.get("command")
        if other is not None and other != self.command:
            raise DfkdError(f"{self.path} holds a `dfkd-fast {other}` run, not a `dfkd-fast {self.command}` run")

    def close(self, failed: bool = False) -> None:
        """Release the lock; after a failure, remove the directory this run created if it holds no checkpoint."""
        if _OPEN.get(getattr(self, "_key", None)) is self:
            del _OPEN[self._key]
        held, self._fd = self._fd is not None, None
        if self._finalizer is not None:
            self._finalizer()
        if failed and held and self._created is not None and not self.checkpoint_path.exists():
            shutil.rmtree(self._created, ignore_errors=True)
        elif failed and self._created is not None:  # not locked by us: remove only what is still empty
            folder = self.path.absolute()
            with contextlib.suppress(OSError):
                while True:
                    folder.rmdir()
                    if folder == self._created:
                        break
                    folder = folder.parent
        self._created = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, kind, *_) -> None:
        self.close(failed=kind is not None)

    # -- files -------------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def write_config(self, config: dict) -> None:
        config = {**config, "command": self.command} if self.command else config
        atomic_write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n", self.config_path)

    def read_config(self, required: Iterable[str] = ()) -> dict:
        path = self.config_path
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DfkdError(f"cannot read {path}: {exc}") from None
        if not isinstance(config, dict):
            raise DfkdError(f"{path} does not hold a JSON object")
        self._check_command(config)
        missing = [k for k in required if k not in config]
        if missing:
            raise DfkdError(f"{path} lacks {', '.join(missing)}: not the config of a `dfkd-fast {self.command}` run")
        return config

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (strict JSON: a non-finite number is refused, never written)."""
        try:
            line = json.dumps(record, sort_keys=True, default=float, allow_nan=False) + "\n"
        except ValueError:
            bad = [k for k, v in record.items() if isinstance(v, (float, torch.Tensor)) and not _finite(v)]
            raise DivergenceError(f"non-finite {', '.join(bad) or 'value'} in a metrics record (not written); "
                                  "lower the learning rates") from None
        try:
            with open(self.metrics_path, "a") as f:
                if _crash_due("record-partial"):
                    f.write(line[:len(line) // 2])
                    f.flush()
                    _die()
                f.write(line)
                f.flush()
        except OSError as exc:
            raise _write_error(self.metrics_path, exc) from None
        crash_point("record")

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def save(self, state: dict) -> None:
        """Write the checkpoint atomically, with the RNG states and the current length of metrics.jsonl."""
        size = self.metrics_path.stat().st_size if self.metrics_path.is_file() else 0
        atomic_save({**state, "rng": rng_state(), "metrics_bytes": size, "command": self.command},
                    self.checkpoint_path)

    def load(self, map_location: str | torch.device = "cpu") -> dict:
        """Load the checkpoint, restore the RNG states and drop metrics logged after it was written."""
        state = load_checkpoint(self.checkpoint_path, map_location)
        other = state.get("command")
        if other is not None and self.command is not None and other != self.command:
            raise DfkdError(f"{self.checkpoint_path} was written by `dfkd-fast {other}`, not `dfkd-fast "
                            f"{self.command}`")
        try:
            set_rng_state(state["rng"])
            size = int(state.get("metrics_bytes", 0))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise DfkdError(f"{self.checkpoint_path} is not a dfkd-fast run checkpoint (its RNG state: "
                            f"{type(exc).__name__}: {exc})") from None
        if self.metrics_path.is_file():
            with open(self.metrics_path, "r+b") as f:
                f.truncate(size)
        return state

    def restore(self, target, state: dict | None = None, map_location: str | torch.device = "cpu") -> dict:
        """``target.load_state_dict(checkpoint)`` (or ``target(checkpoint)`` for a function), loading the checkpoint
        unless ``state`` is given; a checkpoint of another structure is a one-line DfkdError instead of a KeyError
        deep inside."""
        state = self.load(map_location) if state is None else state
        try:
            (target.load_state_dict if hasattr(target, "load_state_dict") else target)(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:200]
            raise DfkdError(f"{self.checkpoint_path} does not fit this run ({type(exc).__name__}: {detail})") \
                from None
        return state

    def plot_metrics(self) -> None:
        """``curves.png``: the learning curves (losses and accuracies) of metrics.jsonl."""
        plot_curves(self.metrics(), self.path / CURVES)


RESUME_FREE = {"out", "resume", "device", "data_root", "task", "given"}


def resume_options(args, saved: Mapping[str, Any], command: str, *, extend: Iterable[str] = ("epochs",),
                   spell: str = "_") -> dict:
    """What ``--resume`` does with the other flags: a resumed run is the run that was started, so a flag given
    with ``--resume`` (``args.given``, from :func:`dfkd_fast.cli.given_options`) must repeat its saved value, except
    the run's location and device (``--out --device --data-root``) and ``--epochs`` larger than the saved value,
    which extends the run. Anything else is refused in one line. Returns the overrides (name -> new value)."""
    changes = {}
    for name in sorted(set(getattr(args, "given", ())) - RESUME_FREE):
        value, old = getattr(args, name), saved.get(name)
        if name in saved and old == value:
            continue
        flag = "--" + name.replace("_", spell)
        if name in extend and isinstance(old, int) and isinstance(value, int) and value > old:
            changes[name] = value
            continue
        what = (f"{flag} {value} is smaller than the saved {old}: a run cannot be shortened" if name in extend
                else f"{flag} {value} differs from the saved {old!r} (only --epochs, to a larger value, extends a run)")
        raise DfkdError(f"{command} --resume continues the saved run: {what}; start a new run with another --out")
    return changes


def close_all(failed: bool = False) -> None:
    """Close every open :class:`RunDir` (the CLI calls this when a command ends)."""
    for run_dir in list(_OPEN.values()):
        run_dir.close(failed=failed)


atexit.register(close_all)  # a run directory left open by Python code: release its lock file at exit


def say(message: str, *, err: bool = False) -> None:
    """Print ``message`` and add it to the open run's log.txt."""
    print(message, file=sys.stderr if err else sys.stdout)
    logger.info(message)


def plot_curves(records: list[dict], path: str | os.PathLike) -> None:
    """Learning curves from metrics records: one panel of losses, one of accuracies, per x axis (``epoch`` or the
    generation ``step``). Nothing is drawn without records; matplotlib is imported only here."""
    groups: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in records:
        x_key = "step" if "step" in r else "epoch" if "epoch" in r else None
        if x_key is None:
            continue
        for k, v in r.items():
            if k in (x_key, "epoch", "step") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            kind = "accuracy" if "acc" in k else "loss" if ("loss" in k or k.startswith(("G_", "S_"))) else None
            if kind is not None:
                groups.setdefault(f"{kind} per {x_key}", {}).setdefault(k, []).append((r[x_key], v))
    if not groups:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (title, series) in zip(axes[0], sorted(groups.items())):
        for name, points in sorted(series.items()):
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel(title.split(" per ")[1])
        ax.legend(fontsize=7)
    fig.tight_layout()
    _atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


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
