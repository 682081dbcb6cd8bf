"""Implementations of the ``fedrlhf`` subcommands (argument parsing lives in :mod:`fedrlhf.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fedrlhf.config import DP_RECIPE, NON_PRIVATE_DEFAULTS, ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback import read_feedback
from fedrlhf.feedback.records import Correction, Preference
from fedrlhf.io import atomic_write_bytes


def _read(path: Path, skip_invalid: bool) -> list:
    result = read_feedback(path, skip_invalid=skip_invalid)
    if result.skipped:
        print(
            f"skipped {len(result.skipped)} invalid line(s) of {path} "
            f"(first: line {result.skipped[0][0]}: {result.skipped[0][1]})",
            file=sys.stderr,
        )
    return result.records


def _configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, PrivacyConfig]:
    dp_on = args.dp_epsilon is not None or args.dp_noise_multiplier is not None
    defaults = DP_RECIPE if dp_on else NON_PRIVATE_DEFAULTS  # a value given on the command line wins

    def pick(arg: str, key: str) -> Any:
        value = getattr(args, arg, None)
        return defaults[key] if value is None else value

    model = ModelConfig(
        backbone=args.backbone,
        max_length=args.max_length,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_target_modules=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        lora_layers=args.lora_layers,
        trainable=pick("trainable", "model.trainable"),
        pool_layers=pick("pool_layers", "model.pool_layers"),
    )
    train = TrainConfig(
        epochs=pick("epochs", "train.epochs"),
        batch_size=pick("batch_size", "train.batch_size"),
        grad_accumulation=args.grad_accumulation,
        lr=pick("lr", "train.lr"),
        seed=args.seed,
        threads=args.threads,
    )
    privacy = PrivacyConfig(
        enabled=dp_on,
        target_epsilon=args.dp_epsilon,
        noise_multiplier=args.dp_noise_multiplier,
        delta=args.dp_delta,
        max_grad_norm=args.max_grad_norm,
        accountant=args.dp_accountant,
    )
    return model, train, privacy


def default_ledger(data: Path, records: list) -> Path:
    """Where the privacy spent on ``records`` is accounted, over every run on them.

    A ledger in ``$FEDRLHF_HOME/ledgers`` (default ``~/.fedrlhf/ledgers``) found by the
    records' content, not the file's path: the unit is the record (its SHA-256 over kind and
    fields), so a copy, a rename, a reordering, a subset or a superset of the data spends
    the same budget (:mod:`fedrlhf.privacy.registry`). A ledger kept by an older version
    for this file's path is adopted.
    """
    import hashlib
    import os

    from fedrlhf.privacy.registry import ledger_for_records, record_key

    home = Path(os.environ.get("FEDRLHF_HOME", Path.home() / ".fedrlhf")) / "ledgers"
    legacy = home / f"{data.name}-{hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]}.json"
    return ledger_for_records(home, (record_key(r) for r in records), legacy=legacy)


def train_command(args: argparse.Namespace) -> int:
    """``fedrlhf train``: fit a reward model on a JSONL file and save it to ``--out``."""
    from fedrlhf.io import check_replaceable
    from fedrlhf.models.reward import CONFIG_FILE
    from fedrlhf.training.session import fit

    check_replaceable(args.out, legacy=(CONFIG_FILE,), label="--out")  # refuse before training, not after
    model_cfg, train_cfg, privacy_cfg = _configs(args)
    records = _read(args.data, args.skip_invalid)
    eval_pairs = _read(args.eval_data, args.skip_invalid) if args.eval_data is not None else None
    ledger = args.ledger or (default_ledger(args.data, records) if privacy_cfg.enabled else None)
    result = fit(
        records,
        model_cfg,
        train_cfg,
        privacy=privacy_cfg,
        ledger_path=ledger,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )
    summary: dict[str, Any] = {
        "units": len(records),
        "steps": result.train.steps,
        "mean_loss": result.train.mean_loss,
        "seconds": round(result.train.seconds, 2),
    }
    extra: dict[str, Any] = {}  # written inside the model directory, in the same atomic replacement
    if result.privacy is not None:
        extra["privacy.json"] = result.privacy
        summary["epsilon"] = result.privacy["epsilon"]
        summary["ledger"] = str(ledger)
    if eval_pairs is not None:
        from fedrlhf.training import encode, evaluate

        summary["eval"] = evaluate(
            result.model, encode(eval_pairs, result.model.tokenizer, model_cfg.max_length)
        ).to_dict()
    extra["training.json"] = summary
    result.model.save_pretrained(args.out, extra_json=extra)
    print(json.dumps(summary))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """``fedrlhf eval``: pairwise accuracy of a saved model on preference pairs."""
    from fedrlhf.models import RewardModel
    from fedrlhf.training import encode
    from fedrlhf.training.evaluate import metrics_from_margins, score_pairs

    start = time.perf_counter()
    if args.per_pair is not None and args.per_pair.is_dir():
        raise ConfigError(f"--per-pair {args.per_pair} is a directory; give the path of a file to write")
    records = _read(args.data, args.skip_invalid)
    pairs = [r for r in records if isinstance(r, (Preference, Correction))]
    if not pairs:
        raise DataError("holds no preference pairs to evaluate on", path=str(args.data))
    model = RewardModel.from_pretrained(args.model)
    data = encode(pairs, model.tokenizer, model.config.max_length)
    margins = score_pairs(model, data, batch_size=args.batch_size)
    result = metrics_from_margins(margins)
    if args.per_pair is not None:
        lines = "".join(json.dumps({"index": i, "margin": float(m)}) + "\n" for i, m in enumerate(margins))
        atomic_write_bytes(args.per_pair, lines.encode())
    out = result.to_dict()
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"pairs      {out['pairs']}\naccuracy   {out['accuracy']:.4f}\n"
            f"mean margin {out['mean_margin']:.4f}\nECE        {out['ece']:.4f}\n"
            f"seconds    {time.perf_counter() - start:.1f}"
        )
    return 0


def simulate_command(args: argparse.Namespace) -> int:
    """``fedrlhf simulate``: run (or resume) a federated cohort and write the report."""
    from fedrlhf.config import load_run_config
    from fedrlhf.simulation.run import run_simulation

    cfg = load_run_config(args.config, args.overrides)
    out = args.out or Path("runs") / args.config.stem
    report = run_simulation(cfg, out, workers=args.workers, progress=not args.quiet)
    final = report["final"]
    print(json.dumps({k: final[k] for k in ("global_accuracy", "personal_accuracy", "epsilon", "seconds")}))
    print(f"report: {out / 'report.md'}  plots: {out / 'accuracy.png'}, {out / 'privacy_bytes.png'}")
    return 0


def privacy_command(args: argparse.Namespace) -> int:
    """``fedrlhf privacy report``: spent / remaining budget from a device's ledger."""
    from fedrlhf.privacy.ledger import PrivacyLedger

    path = args.ledger or (args.device_dir / "privacy_ledger.json")
    if not path.is_file():
        raise DataError("no privacy ledger here: this data has not been trained on with DP", path=str(path))
    ledger = PrivacyLedger.open(path, lifetime_epsilon=args.lifetime_epsilon)  # its own accountant and delta
    report = ledger.report()
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    remaining = report["remaining"]
    print(
        f"ledger      {path}\naccountant  {report['accountant']}  delta {report['delta']:g}\n"
        f"runs        {len(report['entries'])}\nepsilon     {report['epsilon']:.4f} spent"
        + (f"\nremaining   {remaining:.4f} of {args.lifetime_epsilon:g}" if remaining is not None else "")
    )
    return 0


def rerank_command(args: argparse.Namespace) -> int:
    """``fedrlhf rerank``: rank given or generated candidates with a saved reward model."""
    from fedrlhf.models import RewardModel
    from fedrlhf.rerank import rank, read_candidates, read_prompts

    if args.out is not None and args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a directory; give the path of a file to write")
    if args.candidates is not None:
        prompts, candidates = read_candidates(args.candidates)
        policy = None
    else:
        from fedrlhf.models.policy import PolicyModel

        prompts = read_prompts(args.prompts)
        policy = PolicyModel.from_pretrained(args.policy)
    model = RewardModel.from_pretrained(args.reward_model)
    if policy is not None:
        candidates = policy.generate(
            prompts,
            n=args.n,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
        )
    ranked = rank(model, prompts, candidates, batch_size=args.batch_size)
    rows = []
    for i, r in enumerate(ranked):
        row = r.to_dict(i)
        if policy is not None:
            row.update(prompt=prompts[i], candidates=candidates[i])
        rows.append(json.dumps(row) + "\n")
    if args.out is None:
        sys.stdout.write("".join(rows))
    else:
        atomic_write_bytes(args.out, "".join(rows).encode())
    return 0
