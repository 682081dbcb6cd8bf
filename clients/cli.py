"""fedrlhf-client: your feedback, encrypted on this device; train locally, join a federation.

Every command works on one client directory (--device, default $FEDRLHF_DEVICE or
~/.fedrlhf/device-<random id>, made by init).  Its store is encrypted with a key file (--key-file, default
DIR/store.key) or with a passphrase read from the environment variable named by
--passphrase-env (never from the command line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clients import app, supernode, web
from fedrlhf.errors import ConfigError, FedRLHFError
from fedrlhf.feedback import Correction, Preference, Rating
from fedrlhf.feedback.store import StoredFeedback

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


def summary(item: StoredFeedback, width: int = 60) -> str:
    """One line describing a stored record, for listings."""
    r = item.record

    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    if isinstance(r, Rating):
        what = f"{'thumbs up' if r.label == 1 else 'thumbs down'}: {short(r.response)!r}"
    elif isinstance(r, Preference):
        what = f"chose {short(r.chosen)!r} over {short(r.rejected)!r}"
    elif isinstance(r, Correction):
        what = f"corrected {short(r.response)!r} to {short(r.corrected)!r}"
    else:  # pragma: no cover
        what = type(r).__name__
    reason = f" (reason: {short(r.reason)!r})" if r.reason else ""
    return f"{item.id:>5}  {item.created_at:%Y-%m-%d %H:%M}  {what}{reason}"


def _client(args: argparse.Namespace, *, create: bool = False) -> app.ClientDevice:
    passphrase = None
    if args.passphrase_env:
        passphrase = os.environ.get(args.passphrase_env)
        if not passphrase:
            raise ConfigError(f"environment variable {args.passphrase_env} is empty or not set")
    root = args.device or app.default_device_dir()
    if create:
        settings = app.ClientSettings(
            backbone=args.backbone,
            max_length=args.max_length,
            lifetime_epsilon=args.lifetime_epsilon,
            delta=args.delta,
        )
        return app.ClientDevice.init(
            root, settings, passphrase=passphrase, key_file=args.key_file, force=args.force
        )
    return app.ClientDevice.open(root, passphrase=passphrase, key_file=args.key_file)


def _warn_corrupt(args: argparse.Namespace, ids: tuple[int | str, ...], what: str = "record") -> None:
    """One stderr line naming rows that failed authentication and were left out."""
    if ids:
        shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
        fix = f"'{PROG} {'forget' if what == 'record' else 'queue --drop'} {ids[0]}' deletes one"
        print(
            f"{PROG} {args.command}: warning: skipped {len(ids)} {what}{'s' if len(ids) != 1 else ''} "
            f"that failed authentication (damaged or modified; ids {shown}); {fix}",
            file=sys.stderr,
        )


def cmd_init(args: argparse.Namespace) -> int:
    """Create the client directory, its key and its encrypted store."""
    client = _client(args, create=True)
    print(
        f"client ready at {client.root} (store encrypted with "
        f"{'your passphrase' if client.passphrase else client.key_file})"
    )
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """Record one thumbs up/down, A/B choice or correction."""
    item: Rating | Preference | Correction
    if args.kind in ("up", "down"):
        item = Rating(args.prompt, args.response, 1 if args.kind == "up" else -1, args.reason)
    elif args.kind == "ab":
        chosen, rejected = (args.a, args.b) if args.choice == "a" else (args.b, args.a)
        item = Preference(args.prompt, chosen, rejected, args.reason)
    else:
        item = Correction(args.prompt, args.response, args.corrected, args.reason)
    print(f"recorded {app.record(_client(args), item)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List stored feedback (decrypted, on this device only)."""
    client = _client(args)
    with client.store() as store:
        items = store.list(since=args.since)
    _warn_corrupt(args, items.corrupt)
    for item in items:
        if args.json:
            fields = {k: v for k, v in vars(item.record).items() if v is not None}
            print(
                json.dumps(
                    {
                        "id": item.id,
                        "created_at": item.created_at.isoformat(),
                        "kind": type(item.record).__name__.lower(),
                        **fields,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            print(summary(item))
    if not items and not args.json:
        print("no feedback recorded")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write every record, personal data scrubbed, as JSONL."""
    with _client(args).store() as store:
        done = store.export_jsonl(args.out)
    _warn_corrupt(args, done.corrupt)
    print(f"exported {done.count} records to {done.path} (personal data scrubbed)")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """Delete records by id, since a time, or all."""
    chosen = sum([bool(args.ids), args.since is not None, args.all])
    if chosen != 1:
        raise ConfigError("forget takes exactly one of: record ids, --since TIME, --all")
    client = _client(args)
    n = app.forget(client, ids=args.ids, since=args.since, everything=args.all)
    print(f"forgot {n} record{'s' if n != 1 else ''}")
    if n and (client.root / "personal.safetensors").is_file():
        print("your personal adapter was trained on them: run 'train-personal --reset' to retrain it")
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    """Show the privacy budget spent and remaining."""
    spent = app.budget(_client(args))
    print(json.dumps(spent.to_json()) if args.json else spent.describe())
    return 0


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


def cmd_queue(args: argparse.Namespace) -> int:
    """Add an item for the web page, or list the waiting ones."""
    client = _client(args)
    if args.drop is not None:
        web.skip(client, args.drop)
        print(f"dropped {args.drop}")
        return 0
    if args.response and args.reward_model:
        item, ranked = web.enqueue_ranked(client, args.prompt, args.response, args.reward_model)
        for n, (score, text) in enumerate(ranked, 1):
            print(f"{n}. {score:+.3f}  {' '.join(text.split())[:70]}")
        print(f"queued {item.id}: A = the reward model's pick, B = its runner-up")
        return 0
    if args.response:
        item = web.enqueue(client, args.prompt, args.response)
        print(f"queued {item.id}")
        return 0
    waiting = web.pending(client)
    _warn_corrupt(args, waiting.corrupt, "queued item")
    for item in waiting:
        print(f"{item.id}  {'A/B' if len(item.responses) == 2 else 'thumbs'}  {item.prompt[:60]!r}")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the feedback page on 127.0.0.1."""
    web.serve(_client(args), port=args.port, open_browser=args.open)
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
