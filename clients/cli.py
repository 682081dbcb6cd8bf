"""fedrlhf-client: your feedback, encrypted on this device; train locally, join a federation.

Every command works on one client directory (--device, default $FEDRLHF_DEVICE or
~/.fedrlhf/device-<random id>, made by init).  Its store is encrypted with a key file (--key-file, default
DIR/store.key) or with a passphrase read from the environment variable named by
--passphrase-env (never from the command line).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from clients import app, supernode
from clients.cli_args import PROG, _add_federation_parsers, _add_record_parsers, _epsilon, _when
from clients.cli_feedback import (
    _client,
    _warn_corrupt,
    cmd_budget,
    cmd_export,
    cmd_forget,
    cmd_init,
    cmd_list,
    cmd_queue,
    cmd_record,
    cmd_web,
)
from clients.cli_feedback import summary as summary
from fedrlhf.errors import ConfigError, FedRLHFError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fedrlhf-client``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", type=Path, default=None, help="client directory")
    key = parser.add_mutually_exclusive_group()
    key.add_argument(
        "--passphrase-env",
        metavar="VAR",
        default=None,
        help="environment variable holding the store's passphrase",
    )
    key.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="the store's 32-byte key file (default DIR/store.key; created by init)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="create the client directory and its encrypted store")
    init.add_argument("--backbone", default="minilm", help="reward-model backbone (the federation's)")
    init.add_argument("--max-length", type=int, default=64)  # the federation's model.max_length (pyproject)
    init.add_argument(
        "--lifetime-epsilon",
        type=_epsilon,
        default=8.0,
        help="the privacy budget (epsilon) you allow this device over its lifetime; it binds every "
        "federated round (default 8; 0 = nothing may be spent; 'none' = no limit)",
    )
    init.add_argument("--delta", type=float, default=1e-5)
    init.add_argument(
        "--force", action="store_true", help="make a new, empty feedback.db if this client's has vanished"
    )
    _add_record_parsers(sub)
    ls = sub.add_parser("list", help="list your feedback")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.add_argument("--since", type=_when, default=None, help="only since this time (2h, 3d, ISO date)")
    ex = sub.add_parser("export", help="write your feedback, personal data scrubbed, as JSONL")
    ex.add_argument("out", type=Path)
    fg = sub.add_parser("forget", help="delete feedback for good (also from training exports)")
    fg.add_argument("ids", type=int, nargs="*", help="record ids (see list)")
    fg.add_argument("--since", type=_when, default=None, help="everything since this time")
    fg.add_argument("--all", action="store_true", help="everything")
    b = sub.add_parser("budget", help="privacy budget spent and remaining")
    b.add_argument("--json", action="store_true")
    _add_federation_parsers(sub)
    q = sub.add_parser("queue", help="responses waiting for your judgement in the web page")
    q.add_argument("--prompt", default="", help="with --response: add an item")
    q.add_argument("--response", action="append", default=[], help="one (thumbs) or two (A/B) responses")
    q.add_argument(
        "--reward-model",
        metavar="DIR",
        default=None,
        help="rank two or more responses with this saved reward model; its best two become an A/B item",
    )
    q.add_argument("--drop", metavar="ID", default=None, help="remove a waiting item (even a damaged one)")
    w = sub.add_parser("web", help="a local web page to give feedback (127.0.0.1 only)")
    w.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    w.add_argument("--open", action="store_true", help="open it in the default browser")
    return parser


def _quiet_libraries() -> None:
    """No progress bars from transformers while training (fedrlhf.models.backbone already filters
    the one library deprecation notice a user cannot act on; other warnings stay visible)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cmd_train_personal(args: argparse.Namespace) -> int:
    """Train the personal adapter on this device."""
    _quiet_libraries()
    result = app.train_personal(
        _client(args),
        global_model=args.global_model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        reset=args.reset,
        require_reason=args.require_reason,
    )
    _warn_corrupt(args, result.corrupt)
    print(
        f"personal adapter trained on {result.examples} examples ({result.steps} steps, "
        f"mean loss {result.mean_loss:.4f}); saved to {result.path}"
    )
    return 0


def _supernode_executable() -> str:
    beside = Path(sys.executable).parent / "flower-supernode"
    return str(beside) if beside.is_file() else shutil.which("flower-supernode") or "flower-supernode"


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write the device's SuperNode key pair; the operator registers the public half."""
    key = supernode.make_node_key(_client(args).root, new=args.new)
    print(
        f"wrote {key} (private: it never leaves this device) and {key}.pub: send {key}.pub to the "
        f"federation's operator, who registers it ('flwr supernode register {key.name}.pub <federation>'); "
        "join uses this key unless --auth-key names another"
    )
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    """Export the training data and run flower-supernode until it stops (or print it with --dry-run).

    Records are noted as shared in the store only when a round trained on them (the ClientApp
    notes it, see :mod:`fedrlhf.feedback.usage`), never for a connection that fails.
    """
    client = _client(args)
    left = app.check_budget_left(client)
    exe = _supernode_executable()
    conn = supernode.Connection(
        args.superlink, args.root_certificates, args.auth_key, args.insecure, args.port, args.max_retries
    )
    cmd = supernode.supernode_command(client.root, conn, executable=exe)
    session = f"join:{args.superlink}:{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    export = app.export_for_training(
        client,
        test_fraction=args.test_fraction,
        seed=args.seed,
        require_reason=args.require_reason,
        session=session,
    )
    _warn_corrupt(args, export.corrupt)
    print(
        f"exported {len(export.train_ids)} train and {len(export.test_ids)} test records "
        f"({len(export.dropped)} dropped by the quality filter) to {client.root}"
    )
    print(f"privacy: {left.describe()}")
    # no telemetry, and no "Loading weights" progress bars from each round's ClientApp process
    quiet = {"FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env = {k: os.environ.get(k, v) for k, v in quiet.items()}
    print(shlex.join([f"{k}={v}" for k, v in env.items()] + cmd), flush=True)
    if args.dry_run:
        return 0
    if not Path(exe).is_file() and shutil.which(exe) is None:
        raise ConfigError("flower-supernode is not installed: pip install 'flwr==1.41.0'")
    supernode.serve(cmd, {**os.environ, **env}, conn=conn, key=conn.key_for(client.root))
    rounds = app.rounds_of(client, session)  # opening the store notes the rounds the ClientApp reported
    print(
        f"{PROG} join: stopped; {rounds} federated round{'s' if rounds != 1 else ''} trained on your "
        "feedback in this session",
        file=sys.stderr,
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "init": cmd_init,
    "record": cmd_record,
    "list": cmd_list,
    "export": cmd_export,
    "forget": cmd_forget,
    "budget": cmd_budget,
    "train-personal": cmd_train_personal,
    "keygen": cmd_keygen,
    "join": cmd_join,
    "queue": cmd_queue,
    "web": cmd_web,
}


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user errors, with a one-line message)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe (list | head) shows here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a reader that stopped early
    except (FedRLHFError, OSError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
