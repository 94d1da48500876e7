"""One CLI vocabulary: every multi-word flag of every subcommand is accepted with hyphens and with underscores.

Upstream CPSC-DFKD spells its flags ``--batch_size``, PyG-style scripts ``--batch-size``; rather than listing both on
every ``add_argument`` line, :func:`accept_both_spellings` adds the missing spelling to each option of a finished
parser (``--no-`` of boolean flags stays hyphenated: argparse's BooleanOptionalAction reads that prefix).
"""

from __future__ import annotations

import argparse


def _spellings(option: str) -> list[str]:
    if not option.startswith("--"):
        return []
    prefix, body = ("--no-", option[5:]) if option.startswith("--no-") else ("--", option[2:])
    return [prefix + body.replace("_", "-"), prefix + body.replace("-", "_")]


def accept_both_spellings(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``--a-b`` for every ``--a_b`` option of ``parser`` and vice versa (help shows the given spelling)."""
    for action in list(parser._actions):
        for option in list(action.option_strings):
            for alt in _spellings(option):
                owner = parser._option_string_actions.get(alt)
                if owner is None:
                    action.option_strings.append(alt)
                    parser._option_string_actions[alt] = action
                elif owner is not action:
                    raise ValueError(f"{parser.prog}: {option} and {alt} name different options")
    return parser

