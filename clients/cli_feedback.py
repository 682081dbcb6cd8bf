"""The ``fedrlhf-client`` commands on the feedback store and the web page
(init, record, list, export, forget, budget, queue, web) and the helpers every command shares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from clients import app, web
from clients.cli_args import PROG
from fedrlhf.errors import ConfigError
from fedrlhf.feedback import Correction, Preference, Rating
from fedrlhf.feedback.store import StoredFeedback


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
