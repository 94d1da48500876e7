"""The ``dfkd-fast`` command.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and ``run(args) -> int``;
``teacher`` and ``eval`` pick the image or graph module with ``--task``. Every multi-word flag is accepted with
hyphens and with underscores (:mod:`dfkd_fast._cli_args`). Problems with the user's input
(:class:`dfkd_fast.errors.DfkdError`, the ValueError of an op's input validation, e.g. a NaN of a diverged run
reaching an op, and a missing optional dependency, named with its extra) are printed as one line;
``DFKD_FAST_DEBUG=1`` shows the traceback. When a command ends, the run directories it opened are closed (their
locks released; a directory that a failed command created and that holds no checkpoint is removed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from dfkd_fast import runs
from dfkd_fast._cli_args import accept_both_spellings
from dfkd_fast._deps import missing_message
from dfkd_fast.errors import DfkdError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# name -> (module, or {task: module}, one-line help)
COMMANDS: dict[str, tuple[str | dict[str, str], str]] = {
    "env": ("dfkd_fast.env", "versions, devices and a check of every op on every backend against its reference"),
    "demo": ("dfkd_fast.demo", "the README's main job: teachers, data-free distillation, held-out accuracy"),
    "teacher": (
        {"image": "dfkd_fast.cpsc.teacher", "graph": "dfkd_fast.acgkd.teacher"},
        "train a teacher on a real dataset (--task image|graph)",
    ),
    "cpsc": ("dfkd_fast.cpsc.cli", "distil an image classifier with CPSC-DFKD (no training data)"),
    "acgkd": ("dfkd_fast.acgkd.cli", "distil a graph classifier with ACGKD (or --method gfkd)"),
    "eval": (
        {"image": "dfkd_fast.cpsc.evaluate", "graph": "dfkd_fast.acgkd.evaluate"},
        "evaluate a teacher or student checkpoint on a test set (--task image|graph)",
    ),
}


def _module_for(name: str, argv: list[str]):
    target, _ = COMMANDS[name]
    if isinstance(target, dict):
        probe = argparse.ArgumentParser(add_help=False)
        probe.add_argument("--task", choices=sorted(target), default="image")
        task = probe.parse_known_args(argv)[0].task
        return importlib.import_module(target[task]), sorted(target)
    return importlib.import_module(target), None


def build_parser(name: str | None = None, argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="dfkd-fast", description="Fast data-free knowledge distillation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module = None
    for cmd, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(cmd, help=help_text, description=help_text)
        if cmd == name:
            module, tasks = _module_for(cmd, argv or [])
            if tasks:
                p.add_argument("--task", choices=tasks, default="image", help="image or graph classifier")
            module.add_arguments(p)
            accept_both_spellings(p)  # --batch-size and --batch_size alike, in every subcommand
    return parser, module


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations the user set on the command line (argv parsed again with every default suppressed), so
    that ``--resume`` can tell a flag the user passed from a default."""
    saved = []

    def suppress(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    suppress(sub)
            elif action.dest != "help":
                saved.append((action, action.default))
                action.default = argparse.SUPPRESS

    suppress(parser)
    try:
        return set(vars(parser.parse_args(argv))) - {"command"}
    finally:
        for action, default in saved:
            action.default = default


def _raised_by_dfkd_fast(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is dfkd_fast code (an op's input check), not torch or a bug's."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv and argv[0] in COMMANDS else None
    failed = True
    try:
        parser, module = build_parser(name, argv[1:])
        args = parser.parse_args(argv)
        args.given = given_options(parser, argv)
        code = int(module.run(args) or 0)
        failed = code != 0
        return code
    except (DfkdError, ValueError) as exc:
        if os.environ.get("DFKD_FAST_DEBUG") == "1" or not (isinstance(exc, DfkdError) or _raised_by_dfkd_fast(exc)):
            raise
        runs.say("dfkd-fast: error: " + " ".join(str(exc).split()), err=True)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency: name the extra that installs it
        message = missing_message(exc)
        if message is None or os.environ.get("DFKD_FAST_DEBUG") == "1":
            raise
        runs.say(f"dfkd-fast: error: {message}", err=True)
        return 2
    except KeyboardInterrupt:
        runs.say("dfkd-fast: interrupted", err=True)
        return 130
    finally:
        runs.close_all(failed=failed)


if __name__ == "__main__":
    sys.exit(main())
