"""The fedrlhf command: train and evaluate reward models, simulate federations, report privacy."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fedrlhf.cli_subcommands import (
    _add_eval_parser,
    _add_privacy_parser,
    _add_rerank_parser,
    _add_simulate_parser,
    _add_train_parser,
)
from fedrlhf.errors import FedRLHFError


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time unless asked to
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """While a command runs: a warning is one line, ``fedrlhf COMMAND: warning: ...``.

    Opacus' "Optimal order is the largest alpha" is dropped: the epsilon reported is still a
    valid bound, and the RDP orders are not a setting the user has.
    """

    def one_line(message: Warning | str, *_: object, **__: object) -> str:
        text = " ".join(str(message).split())
        return f"fedrlhf {command}: warning: {text}\n"

    previous = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Optimal order is the largest alpha",
            category=UserWarning,
            module=r"opacus\.accountants\.analysis\.rdp",
        )
        warnings.formatwarning = one_line  # type: ignore[assignment]
        try:
            yield
        finally:
            warnings.formatwarning = previous


DESCRIPTION = """\
Train and evaluate reward models on human feedback, simulate a federation of
devices that train one together, and show how much privacy a device has spent.

examples:
  fedrlhf simulate --config simulations/quickstart.toml --out runs/quickstart
  fedrlhf train --data feedback.jsonl --out my-model --dp-epsilon 8
  fedrlhf eval --model my-model --data test.jsonl
  fedrlhf privacy report --device-dir my-device

Run 'fedrlhf COMMAND --help' for the options of one command."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedrlhf`` command."""
    parser = argparse.ArgumentParser(
        prog="fedrlhf", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"fedrlhf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_simulate_parser(sub)
    _add_privacy_parser(sub)
    _add_rerank_parser(sub)
    return parser


def _version() -> str:
    from fedrlhf import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for user errors, with a one-line message)."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from fedrlhf import commands

    handlers: dict[str, Any] = {
        "train": commands.train_command,
        "eval": commands.eval_command,
        "simulate": commands.simulate_command,
        "privacy": commands.privacy_command,
        "rerank": commands.rerank_command,
    }
    try:
        with _plain_warnings(args.command):
            return int(handlers[args.command](args) or 0)
    except FedRLHFError as exc:
        _error(args.command, str(exc))
        return 2
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        _error(args.command, f"{where}{exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _error(command: str, message: str) -> None:
    """Print ``fedrlhf COMMAND: error: MESSAGE`` as one line on stderr."""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"fedrlhf {command}: error: {line}", file=sys.stderr)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
