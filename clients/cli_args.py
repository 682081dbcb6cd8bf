"""Argument types and subcommand parsers of ``fedrlhf-client`` (see :func:`clients.cli.build_parser`)."""

from __future__ import annotations

import argparse
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROG = "fedrlhf-client"
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _when(text: str) -> datetime:
    """``2h``/``3d``/``1w`` ago, or an ISO date/time (local time unless it has an offset)."""
    match = _RELATIVE.match(text.strip())
    if match:
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use e.g. 2h, 3d, 2025-06-01 or 2025-06-01T14:00"
        ) from None


def _epsilon(text: str) -> float | None:
    """``--lifetime-epsilon``: a number >= 0 (0: nothing may be spent), or the word ``none`` (no limit)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a budget: give a number >= 0 (0 = nothing may be spent) or 'none' for no limit"
        )
    return value


def _add_record_parsers(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("record", help="record feedback on a response")
    kinds = rec.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, text in (("up", "thumbs up"), ("down", "thumbs down")):
        p = kinds.add_parser(name, help=f"{text} on one response")
        p.add_argument("--response", required=True)
    ab = kinds.add_parser("ab", help="which of two responses (A or B) is better")
    ab.add_argument("--a", required=True, help="response A")
    ab.add_argument("--b", required=True, help="response B")
    ab.add_argument("--choice", required=True, choices=["a", "b"], help="the better one")
    fix = kinds.add_parser("correct", help="a response and how it should have been")
    fix.add_argument("--response", required=True)
    fix.add_argument("--corrected", required=True)
    for p in kinds.choices.values():
        p.add_argument("--prompt", default="", help="what was asked (optional)")
        p.add_argument("--reason", default=None, help="why (optional; personal data is scrubbed)")


def _add_federation_parsers(sub: argparse._SubParsersAction) -> None:
    tp = sub.add_parser("train-personal", help="train your personal adapter (it never leaves the device)")
    tp.add_argument("--global-model", type=Path, default=None, help="start from this saved global model")
    tp.add_argument("--epochs", type=float, default=2.0)
    tp.add_argument("--batch-size", type=int, default=8)
    tp.add_argument("--lr", type=float, default=1e-3)
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--reset", action="store_true", help="start from a fresh adapter (e.g. after forget)")
    kg = sub.add_parser(
        "keygen", help="make this device's SuperNode key pair (the operator registers the .pub)"
    )
    kg.add_argument("--new", action="store_true", help="replace the existing pair (after a revocation)")
    j = sub.add_parser("join", help="serve this device to a federation (runs a Flower SuperNode)")
    j.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's Fleet API")
    j.add_argument("--root-certificates", type=Path, metavar="CA.pem", help="CA of the SuperLink's TLS cert")
    j.add_argument(
        "--auth-key", type=Path, metavar="KEY", help="registered private key (default: the one keygen made)"
    )
    j.add_argument("--insecure", action="store_true", help="no TLS (local testing only)")
    j.add_argument("--port", type=int, default=None, help="local ClientApp API port (default 9094)")
    j.add_argument("--max-retries", type=int, default=None, help="give up after N failed connections")
    j.add_argument("--dry-run", action="store_true", help="export the data and print the command only")
    for p in (tp, j):
        p.add_argument("--require-reason", action="store_true", help="train only on feedback with a reason")
    j.add_argument("--test-fraction", type=float, default=0.2, help="share held out for evaluation")
    j.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
