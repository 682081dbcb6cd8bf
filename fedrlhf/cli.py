"""The ``fedrlhf`` command: train / eval reward models, simulate federations, report privacy."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fedrlhf.errors import FedRLHFError


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time unless asked to
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default="minilm",
        help="HF model id or local path; 'minilm' = packaged all-MiniLM-L6-v2 (default)",
    )
    g.add_argument("--max-length", type=int, default=128, help="tokens per prompt+response, left-truncated")
    g.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    g.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (default 16)")
    g.add_argument(
        "--lora-targets", default="all-linear", help="comma-separated module names, or all-linear (default)"
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=2.0, help="passes over the data (default 2)")
    g.add_argument("--batch-size", type=int, default=16, help="pairs per step (default 16)")
    g.add_argument("--grad-accumulation", type=int, default=1, help="batches per optimizer step (non-DP)")
    g.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (default 5e-4)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    d = p.add_argument_group("differential privacy (Opacus DP-SGD, one pair = one sample)")
    d.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="train with DP-SGD so that the data's total epsilon stays <= E",
    )
    d.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=None,
        help="train with DP-SGD at this noise multiplier instead of a target epsilon",
    )
    d.add_argument("--dp-delta", type=float, default=1e-5, help="delta of (epsilon, delta)-DP (default 1e-5)")
    d.add_argument("--max-grad-norm", type=float, default=1.0, help="per-pair clipping bound C (default 1.0)")
    d.add_argument("--dp-accountant", choices=["rdp", "prv"], default="rdp")
    d.add_argument(
        "--ledger",
        type=Path,
        default=None,
        help="privacy ledger of this data, composed over every run on it "
        "(default: ~/.fedrlhf/ledgers/<data file>-<hash>.json)",
    )


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedrlhf`` command."""
    parser = argparse.ArgumentParser(prog="fedrlhf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedrlhf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a reward model centrally (the loop a client runs)",
        description="Train a LoRA reward model on preference / rating JSONL and save it.",
    )
    t.add_argument(
        "--data", type=Path, required=True, help="feedback JSONL or JSONL.gz (HH, generic, ratings)"
    )
    t.add_argument("--out", type=Path, required=True, help="directory to save the reward model to")
    t.add_argument("--eval-data", type=Path, default=None, help="also report accuracy on this JSONL")
    t.add_argument("--skip-invalid", action="store_true", help="skip malformed lines instead of failing")
    t.add_argument("--cache-dir", type=Path, default=None, help="cache tokenized data here")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_args(t)
    _add_train_args(t)

    e = sub.add_parser(
        "eval",
        help="pairwise accuracy of a saved reward model",
        description="Evaluate a saved reward model on preference pairs.",
    )
    e.add_argument("--model", type=Path, required=True, help="directory written by 'fedrlhf train'")
    e.add_argument("--data", type=Path, required=True, help="preference JSONL or JSONL.gz")
    e.add_argument("--json", action="store_true", help='print {"pairs": N, "accuracy": A, ...} on stdout')
    e.add_argument(
        "--per-pair",
        type=Path,
        default=None,
        help='write one {"index": i, "margin": m} line per pair, in input order',
    )
    e.add_argument("--batch-size", type=_positive_int, default=64, help="pairs per forward pass (default 64)")
    e.add_argument("--skip-invalid", action="store_true", help="skip malformed lines instead of failing")
    s = sub.add_parser(
        "simulate",
        help="run a federated cohort in Flower's simulation engine",
        description="Simulate a federation from a TOML config; writes report.json, report.md "
        "and PNG plots to --out. Re-running the same command resumes a killed run.",
    )
    s.add_argument("--config", type=Path, required=True, help="TOML run config (see simulations/)")
    s.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<config name>)")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set federation.rounds=5 (repeatable)",
    )
    s.add_argument("--workers", type=int, default=None, help="parallel client workers (default: cores)")
    s.add_argument("--quiet", action="store_true", help="no progress display")

    pr = sub.add_parser("privacy", help="privacy budget of a device or data file")
    prsub = pr.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    rep = prsub.add_parser(
        "report",
        help="epsilon spent and remaining, from the ledger",
        description="Print the privacy spent on a device's data (from its ledger).",
    )
    where = rep.add_mutually_exclusive_group(required=True)
    where.add_argument("--device-dir", type=Path, help="a device directory (holds privacy_ledger.json)")
    where.add_argument("--ledger", type=Path, help="a ledger file")
    rep.add_argument("--lifetime-epsilon", type=float, default=None, help="budget to compare against")
    rep.add_argument("--json", action="store_true", help="print JSON")
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
    }
    try:
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
