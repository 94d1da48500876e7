"""Every command and code block of README.md runs, at tiny settings, so that the README cannot drift (issue 14).

How the README is read (edit README.md freely; this file only needs a change for a new kind of command):

* Fenced ```` ```python ```` blocks run with ``exec``, in order, in one namespace per README section (``##``
  heading: a reader runs them in one session), from a temporary directory. Tracebacks carry README.md line
  numbers. ``PY_INSERT`` below adds setup code (e.g. the undefined ``anchors`` of an illustrative line) just
  before the line that contains its key; ``PY_SUBST`` shrinks sizes. A key that is no longer in the README fails
  the test, naming it.
* Fenced ```` ```bash ```` blocks run line by line (``\\`` continuations joined, ``#`` comments dropped) in one
  temporary directory per block, so later lines see the files of earlier ones (``runs/...``):
  ``dfkd-fast ...`` runs in-process with the tiny flags of ``TINY`` appended (argparse: the last value wins);
  a trailing ``...`` means "the flags of the previous command of that subcommand" (with a fresh ``--out``);
  ``shared/data`` is ``../shared/data`` (the block skips when it is absent); ``make X`` runs ``make -n X``;
  ``pytest ARGS`` runs ``pytest ARGS --collect-only``; ``python SCRIPT ARGS`` checks each flag against
  ``SCRIPT --help`` (scripts in ``PY_SCRIPTS_RUN`` really run).
* Blocks without a language (plain text: the command overview, the layout) are not run.
* An HTML comment right before a block controls it:
  ``<!-- readme-test: skip (reason) -->`` skips the block, ``<!-- readme-test: skip-line PREFIX (reason) -->``
  skips its lines that start with PREFIX. The reason is required and shows in the skip message.

A failure names the README line: ``README.md:123: `dfkd-fast ...` exited with 2: <stderr>``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHARED_DATA = Path(os.environ.get("DFKD_FAST_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()

# Appended to each `dfkd-fast SUBCOMMAND` line (the later flag wins over the README's): seconds, not hours.
TINY = {
    "teacher": ["--epochs", "1"],
    "cpsc": ["--batch-size", "8", "--nz", "16", "--ngf", "8", "--epochs", "1", "--epoch-itrs", "1", "--G-steps", "1",
             "--S-steps", "1", "--warmup-epochs", "1", "--eval-limit", "16", "--sample-every", "1"],
    "acgkd": ["--iterations", "2", "--epochs", "1"],
    "eval": [],
    "eval:image": ["--limit", "16"],
    "demo": ["--quick"],  # and the tiny_demos fixture shrinks --quick further
    "env": [],
}
# python blocks: code run just before the first line containing the key
PY_INSERT = {
    "supcon_loss_pairs(anchors": ("anchors, anchor_labels = torch.cat([f_s, f_t]), y.repeat(2)\n"
                                  "contrast, contrast_labels, rank, n_local = anchors, anchor_labels, 0, 0\n"),
    "cbn = dfkd_fast.nn.ClassConditionalBatchNorm2d": (
        "x, y = torch.randn(8, 128, 4, 4), torch.randint(0, 100, (8,))\n"
        "gamma, beta = torch.randn(100, 128), torch.randn(100, 128)\n"
        "running_mean, running_var = torch.zeros(128), torch.ones(128)\n"),
    "term = dfkd_fast.bn_stats_loss(": (
        "from dfkd_fast.models import build_model\n"
        "teacher = build_model('small_cnn', 10, in_channels=1).eval()\n"
        "bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))\n"
        "bn_input, images = torch.randn(8, bn.num_features, 4, 4), torch.randn(8, 1, 8, 8)\n"
        "ce, beta = torch.zeros(()), 0.1\n"),
    "logits = torch.randn(64, 30, 30, requires_grad=True)": "step = 0\n",
}
# python blocks: (old, new) replacements inside the block containing the key (same line count)
PY_SUBST = {
    "cfg = CPSCConfig(": [("epochs=15, epoch_itrs=10", "epochs=1, epoch_itrs=1"), ("batch_size=64", "batch_size=8")],
    "train_classifier(teacher": [("norm, epochs=20", "norm, epochs=1")],
    "config = make_config(": [("iterations=100, epochs=60", "iterations=2, epochs=1")],
    "train_model(teacher": [("test, epochs=60", "test, epochs=2")],
}
PY_SCRIPTS_RUN = {"bench/report.py": {"FILE.json": "bench/results/cpu/bench.json"}}


@dataclass
class Block:
    lang: str
    line: int  # README line of the first code line (1-based)
    code: list[str]
    section: str  # the enclosing `## ` section: python blocks share one namespace per section
    heading: str  # the nearest heading of any level (test ids)
    markers: list[str] = field(default_factory=list)


def parse(text: str) -> list[Block]:
    blocks, section, heading, pending = [], "", "", []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = re.fullmatch(r"\s*<!--\s*readme-test:\s*(.*?)\s*-->\s*", line)
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append(Block(line[3:].strip(), i + 2, lines[i + 1:end], section, heading, pending))
            pending, i = [], end + 1
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            section = heading if line.startswith("## ") else section
        if marker:
            pending = [*pending, marker.group(1)]
        elif line.strip():
            pending = []  # a marker belongs to the block right after it
        i += 1
    return blocks


BLOCKS = parse(README.read_text())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "top"


def _skip_reason(block: Block) -> str | None:
    for marker in block.markers:
        if marker.startswith("skip ") or marker == "skip":
            reason = marker[4:].strip()
            assert reason.startswith("(") and reason.endswith(")"), \
                f"README.md:{block.line - 1}: `readme-test: skip` needs a (reason), got {marker!r}"
            return reason[1:-1]
    return None


def _skipped_prefixes(block: Block) -> list[tuple[str, str]]:
    out = []
    for marker in block.markers:
        m = re.fullmatch(r"skip-line\s+(.+?)\s+\((.+)\)", marker)
        if m:
            out.append((m.group(1), m.group(2)))
        else:
            assert marker.startswith("skip"), f"README.md:{block.line - 1}: unknown readme-test marker {marker!r}"
    return out


def test_readme_has_blocks_and_markers_are_well_formed():
    assert any(b.lang == "python" for b in BLOCKS) and any(b.lang == "bash" for b in BLOCKS)
    for block in BLOCKS:
        _skip_reason(block)
        _skipped_prefixes(block)
    text = README.read_text()
    stale = [key for key in (*PY_INSERT, *PY_SUBST) if key not in text]
    assert not stale, f"tests/test_readme.py: these keys are no longer in README.md: {stale}"


# ---------------------------------------------------------------------------------------------------- python
PY_SECTIONS: dict[str, list[Block]] = {}
for _b in BLOCKS:
    if _b.lang == "python":
        PY_SECTIONS.setdefault(_b.section, []).append(_b)


def _exec(code: str, first_line: int, namespace: dict) -> None:
    try:
        exec(compile("\n" * (first_line - 1) + code, str(README), "exec"), namespace)
    except Exception as exc:  # name the README line in the failure, not only in the traceback
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(README)]
        line = frames[-1].lineno if frames else getattr(exc, "lineno", first_line)
        pytest.fail(f"README.md:{line}: {type(exc).__name__}: {exc}\n"
                    + "".join(traceback.format_exception(exc)[-6:]))


def run_python_block(block: Block, namespace: dict) -> None:
    text = "\n".join(block.code)
    for key, subs in PY_SUBST.items():
        if key in text:
            for old, new in subs:
                assert old in text, f"README.md:{block.line}: PY_SUBST[{key!r}] expects {old!r} in this block"
                text = text.replace(old, new)
    lines = text.split("\n")
    cut = [(i, PY_INSERT[key]) for key in PY_INSERT for i, line in enumerate(lines) if key in line][:1]
    start = 0
    for i, setup in cut:
        _exec("\n".join(lines[start:i]), block.line + start, namespace)
        exec(setup, namespace)
        start = i
    _exec("\n".join(lines[start:]), block.line + start, namespace)


@pytest.mark.parametrize("section", list(PY_SECTIONS), ids=[f"python:{_slug(s)}" for s in PY_SECTIONS])
def test_python_blocks(section, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    for block in PY_SECTIONS[section]:
        reason = _skip_reason(block)
        if reason:
            warnings.warn(f"README.md:{block.line}: python block skipped: {reason}")
            continue
        run_python_block(block, namespace)


# ------------------------------------------------------------------------------------------------------ bash
BASH_BLOCKS = [b for b in BLOCKS if b.lang == "bash"]


def commands(block: Block):
    """(README line, argv) of each command of a bash block; continuations joined, comments dropped."""
    joined, first = "", None
    for offset, raw in enumerate(block.code):
        if first is None:
            first = block.line + offset
        joined += raw.rstrip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        argv = shlex.split(joined, comments=True)
        if argv:
            yield first, argv
        joined, first = "", None


def _tiny(argv: list[str]) -> list[str]:
    sub = argv[0]
    extra = list(TINY.get(sub, []))
    if sub == "eval" and "graph" not in argv:
        extra += TINY["eval:image"]
    return argv + extra


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def _expand_ellipsis(argv: list[str], previous: dict[str, list[str]], line: int) -> list[str]:
    """`dfkd-fast acgkd --method gfkd ...`: the previous acgkd command's flags, a fresh --out, then these."""
    if argv[-1] != "...":
        return argv
    sub = argv[0]
    assert sub in previous, f"README.md:{line}: `...` but no earlier `dfkd-fast {sub}` line in this block"
    base = list(previous[sub])
    out = _value(base, "--out")
    if out is not None and "--out" not in argv:
        i = base.index("--out")
        base[i + 1] = f"{out}-line{line}"
    return base + argv[1:-1]


def run_dfkd_fast(argv: list[str], line: int) -> None:
    from dfkd_fast import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code
    assert rc == 0, (f"README.md:{line}: `dfkd-fast {shlex.join(argv)}` exited with {rc}:\n"
                     f"{err.getvalue()[-2000:]}{out.getvalue()[-1000:]}")


def run_subprocess(argv: list[str], line: int, cwd: Path, timeout: int = 300) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
                              "PYTHONPATH", "")])})
    assert proc.returncode == 0, (f"README.md:{line}: `{shlex.join(argv)}` exited with {proc.returncode}:\n"
                                  f"{proc.stderr[-2000:]}{proc.stdout[-1000:]}")
    return proc.stdout


def run_command(argv: list[str], line: int, cwd: Path, previous: dict) -> None:
    program, args = argv[0], argv[1:]
    if program == "dfkd-fast":
        args = _expand_ellipsis(args, previous, line)
        previous[args[0]] = args
        run_dfkd_fast(_tiny(args), line)
    elif program == "make":
        run_subprocess(["make", "-n", *args], line, ROOT)
    elif program == "pytest":
        run_subprocess([sys.executable, "-m", "pytest", *args, "--collect-only", "-q", "-p", "no:cacheprovider"],
                       line, ROOT)
    elif program in ("python", "python3") and args and args[0].endswith(".py"):
        script, flags = args[0], args[1:]
        if script in PY_SCRIPTS_RUN:
            subs = PY_SCRIPTS_RUN[script]
            run_subprocess([sys.executable, script, *[subs.get(a, a) for a in flags]], line, ROOT)
            return
        usage = run_subprocess([sys.executable, str(ROOT / script), "--help"], line, cwd)
        for flag in (a.split("=")[0] for a in flags if a.startswith("--")):
            assert flag in usage, f"README.md:{line}: {script} has no flag {flag}"
    else:
        pytest.fail(f"README.md:{line}: tests/test_readme.py does not know how to run `{shlex.join(argv)}`: add a "
                    "rule there, or a `<!-- readme-test: skip-line ... (reason) -->` marker before the block")


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=[f"bash:L{b.line}-{_slug(b.heading)}" for b in BASH_BLOCKS])
def test_bash_blocks(block, tmp_path, monkeypatch, tiny_demos):
    reason = _skip_reason(block)
    if reason:
        pytest.skip(f"README.md:{block.line}: {reason}")
    skipped = _skipped_prefixes(block)
    todo = []
    for line, argv in commands(block):
        text = shlex.join(argv)
        if any(text.startswith(prefix) for prefix, _ in skipped):
            continue
        if any("shared/data" in a for a in argv):
            if not SHARED_DATA.is_dir():
                pytest.skip(f"README.md:{line}: needs the shared data ({SHARED_DATA} is absent)")
            argv = [a.replace("shared/data", str(SHARED_DATA)) for a in argv]
        todo.append((line, argv))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    previous: dict[str, list[str]] = {}
    for line, argv in todo:
        run_command(argv, line, tmp_path, previous)
