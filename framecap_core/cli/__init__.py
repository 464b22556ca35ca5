"""The ``framecap`` command line.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from framecap_core import __version__
from framecap_core.errors import DistributedError, FrameCapError

# Order is the order shown in ``framecap --help``.
SUBCOMMAND_MODULES = ("generate", "prompt", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framecap",
        description=(
            "FrameCap: long, multi-scene videos from a story with Wan2.1-T2V-1.3B. Every latent frame gets its own "
            "caption, and Parallel Multi-Window Denoising (PMWD) denoises overlapping windows of the whole "
            "timeline together."
        ),
    )
    parser.add_argument("--version", action="version", version=f"framecap {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"framecap_core.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"framecap_core.cli.{name}":
                continue
            raise
        module.register(subparsers)
    for subparser in subparsers.choices.values():
        subparser.set_defaults(_flags=_flags_of(subparser))
    return parser


def _flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Option dest -> the flag a user types (``"max_caption_tokens"`` -> ``"--max-caption-tokens"``)."""
    return {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    }


def user_message(exc: FrameCapError, flags: dict[str, str]) -> str:
    """The error's message with the library's name of the setting at fault replaced by the command line's flag:
    ``shift must be a finite number`` -> ``--shift must be a finite number``."""
    message = " ".join(str(exc).split())  # one line, whatever the message holds
    flag = flags.get(exc.field or "")
    if not flag:
        return message
    if message.startswith(exc.field) and not message[len(exc.field) : len(exc.field) + 1].isalnum():
        return flag + message[len(exc.field) :]
    return f"{flag}: {message}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FrameCapError as exc:
        rank = int(os.environ.get("RANK", "0"))  # under torchrun
        message = user_message(exc, getattr(args, '_flags', {}))
        if rank == 0:
            print(f"framecap: error: {message}", file=sys.stderr)
        elif not isinstance(exc, DistributedError):  # rank 0 reports the others' failures
            print(f"framecap: error: (process {rank}) {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("framecap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
