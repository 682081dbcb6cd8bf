"""``fedrlhf simulate``: materialise a cohort on disk, run it in Flower's simulation engine, report."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from fedrlhf.config import RunConfig
from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback import read_feedback, split_records, write_jsonl
from fedrlhf.simulation.cohorts import (
    Cohort,
    SyntheticCohortConfig,
    UserData,
    iter_users,
    materialize,
    user_id,
)
from fedrlhf.simulation.policy_pairs import POOL_FILE

SERVER_TEST_PAIRS = 2000
"""Cap of the operator's held-out set (a sample of the users' test pairs)."""


def synthetic_config(cfg: RunConfig) -> SyntheticCohortConfig:
    """The synthetic cohort a run config describes."""
    c = cfg.cohort
    prior = None
    if c.minority_share > 0:  # the last archetype becomes the minority, the rest share the remainder
        from fedrlhf.simulation.cohorts import ARCHETYPES

        k = len(ARCHETYPES)
        prior = tuple([(1 - c.minority_share) / (k - 1)] * (k - 1) + [c.minority_share])
    return SyntheticCohortConfig(
        num_users=c.num_clients,
        pairs_per_user=c.pairs_per_user,
        test_pairs_per_user=c.test_pairs_per_user,
        alpha=c.alpha,
        beta=c.beta,
        benign_refusal_rate=c.benign_refusal_rate,
        archetype_prior=prior,
        seed=cfg.federation.seed,
    )


def policy_pool_key(cfg: RunConfig) -> str:
    """The answer pool's key of a ``cohort.responses = "policy"`` run."""
    from fedrlhf.simulation.policy_pairs import pool_key

    base = {"model": cfg.policy.model, "max_length": cfg.policy.max_length}  # what writes the answers
    return pool_key(base, cfg.cohort.policy_samples, cfg.federation.seed)


def policy_users(cfg: RunConfig, cache: Path | None) -> list[UserData]:
    """The synthetic users of ``cfg`` with pairs over the base policy's own answers
    (:mod:`fedrlhf.simulation.policy_pairs`); the pool is written to / read from ``cache``."""
    from fedrlhf.simulation.policy_pairs import answer_pool, on_policy_user
    from fedrlhf.training.policy_task import policy_config

    def generate(prompts: list[str], **kwargs: Any) -> list[list[str]]:
        from fedrlhf.models.policy import PolicyModel

        return PolicyModel.build(policy_config(cfg.policy), seed=0).generate(prompts, **kwargs)

    seed = cfg.federation.seed
    pool = answer_pool(generate, cfg.cohort.policy_samples, seed, cache, policy_pool_key(cfg))
    users = [
        on_policy_user(u, pool, beta=cfg.cohort.beta, seed=seed) for u in iter_users(synthetic_config(cfg))
    ]
    for user in users:
        if not user.train:
            raise DataError(
                f"{user.user_id}: the base policy's {cfg.cohort.policy_samples} answers to each of this "
                "user's prompts all have the same utility for them, so there is no preference to "
                "record; raise cohort.policy_samples or use cohort.responses = 'rendered'"
            )
    return users


def _prepare_synthetic(cfg: RunConfig, clients: Path, server_test: Path) -> dict[str, Any]:
    from fedrlhf.simulation.cohorts import bayes_accuracy, bayes_accuracy_by_archetype, utility_accuracy

    scfg = synthetic_config(cfg)
    if cfg.cohort.responses == "policy":
        users = policy_users(cfg, clients.parent / POOL_FILE)
        materialize(Cohort(scfg, users), clients, fingerprint=f"{scfg.fingerprint()}-{policy_pool_key(cfg)}")
    else:
        materialize(scfg, clients)
        users = list(iter_users(scfg))  # regenerated for the ground truth figures only
    step = max(1, sum(len(u.test) for u in users) // SERVER_TEST_PAIRS)
    write_jsonl(server_test, [p for u in users for p in u.test][::step])
    import numpy as np

    mean_w = np.mean([u.weights for u in users], axis=0)
    return {
        "bayes_accuracy": bayes_accuracy(users),
        "bayes_by_archetype": bayes_accuracy_by_archetype(users),
        "population_utility_accuracy": utility_accuracy(users, mean_w),
        "minority_archetype": list(scfg.prior()).index(min(scfg.prior())) if scfg.archetype_prior else None,
    }


def _prepare_jsonl(cfg: RunConfig, clients: Path, server_test: Path) -> dict[str, Any]:
    c = cfg.cohort
    records = read_feedback(c.data).records
    if c.limit:
        records = records[: c.limit]
    pool, test = split_records(records, test_fraction=c.test_fraction, seed=cfg.federation.seed)
    write_jsonl(server_test, test)
    from fedrlhf.simulation import partition

    if c.partition == "iid":
        parts = partition.iid(pool, c.num_clients, seed=cfg.federation.seed)
    else:
        parts = partition.dirichlet_by_cluster(
            pool, c.num_clients, alpha=c.alpha, num_clusters=c.num_clusters, seed=cfg.federation.seed
        )
    for i, idx in enumerate(parts):
        own = [pool[j] for j in idx]
        directory = clients / user_id(i)
        if c.client_test_fraction > 0 and len(own) > 1:
            train, own_test = split_records(
                own, test_fraction=c.client_test_fraction, seed=cfg.federation.seed + i
            )
            write_jsonl(directory / "test.jsonl", own_test or train[-1:])
        else:
            train = own
        write_jsonl(directory / "train.jsonl", train or own)
    return {"train_pairs": len(pool), "server_test_pairs": len(test)}


def _to_encrypted_stores(clients: Path) -> None:
    """Move each client's train.jsonl into an encrypted store, as the device app keeps it."""
    from fedrlhf.feedback.store import FeedbackStore

    for directory in sorted(p for p in clients.iterdir() if p.is_dir()):
        train, db, key = directory / "train.jsonl", directory / "feedback.db", directory / "store.key"
        if db.is_file() or not train.is_file():
            continue  # already a store (a resumed run)
        if not key.is_file():
            FeedbackStore.create_key_file(key)
        with FeedbackStore.open(db, key_file=key, scrub=True) as store:
            for record in read_feedback(train).records:
                store.add(record)
        train.unlink()


def prepare_cohort(cfg: RunConfig, run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """Write every client's directory and the server's held-out set; returns the wired config."""
    clients, server_test = run_dir / "clients", run_dir / "server_test.jsonl"
    clients.mkdir(parents=True, exist_ok=True)
    prepare = _prepare_synthetic if cfg.cohort.kind == "synthetic" else _prepare_jsonl
    info = prepare(cfg, clients, server_test)
    from fedrlhf.simulation.threats import poison_cohort

    info["attackers"] = sorted(poison_cohort(cfg, clients))
    if cfg.cohort.encrypted_store:
        _to_encrypted_stores(clients)
    fed = dataclasses.replace(
        cfg.federation,
        clients_dir=str(clients.resolve()),
        test_data=cfg.federation.test_data or str(server_test.resolve()),
    )
    return dataclasses.replace(cfg, federation=fed), info


def _quiet_workers() -> None:
    """Ray workers inherit the environment: one torch thread each, no library chatter."""
    import logging

    for key, value in (
        ("FEDRLHF_CLIENT_THREADS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("HF_HUB_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("RAY_DEDUP_LOGS", "0"),
        ("PYTHONWARNINGS", "ignore"),
        ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"),
    ):
        os.environ.setdefault(key, value)
    if os.environ.get("FEDRLHF_VERBOSE") != "1":
        logging.getLogger("flwr").setLevel(logging.ERROR)


def _backend_config(workers: int) -> dict[str, Any]:
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": workers,
            "num_gpus": 0,
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": False,
        },
    }


def run_simulation(
    cfg: RunConfig, run_dir: Path, *, workers: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the federation in Flower's simulation engine and write the report.

    ``workers``: parallel client workers (Ray CPUs), at least 1; None = one per core, at most
    ``clients_per_round``.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        # else Flower's engine finds no CPU for a client's actor and stops its backend, while the
        # ServerApp waits on replies that never come (up to federation.timeout per round)
        raise ConfigError(f"workers (--workers) must be an integer >= 1, got {workers!r}")
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fedrlhf.federation.checkpoint import load_checkpoint
    from fedrlhf.federation.server import run_server
    from fedrlhf.simulation.client_app import app as client_app
    from fedrlhf.simulation.engine import faster_engine
    from fedrlhf.simulation.report import Progress, write_report
    from fedrlhf.simulation.threats import eval_hook, update_hook

    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg, cohort_info = prepare_cohort(cfg, run_dir)
    load_checkpoint(run_dir, cfg)  # a broken or foreign checkpoint fails here, before Flower starts
    workers = workers or max(1, min(os.cpu_count() or 1, cfg.federation.clients_per_round))
    _quiet_workers()
    outcome: dict[str, Any] = {}
    bar = Progress(cfg.federation.rounds, enabled=progress)
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Any, context: Any) -> None:
        try:
            outcome["state"] = run_server(
                grid,
                cfg,
                run_dir,
                on_round=bar.update,
                update_hook=update_hook(cfg, set(cohort_info["attackers"])),
                eval_hook=eval_hook(cfg),
            )
        except BaseException as exc:  # surfaced in the calling thread below
            outcome["error"] = exc

    start = time.perf_counter()
    with bar, faster_engine():
        flwr_run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.cohort.num_clients,
            backend_config=_backend_config(workers),
        )  # type: ignore[arg-type]
    if "error" in outcome:
        raise outcome["error"]
    if "state" not in outcome:
        raise RuntimeError("the simulation ended without running the server (see Flower's log above)")
    return write_report(run_dir, cfg, outcome["state"], cohort_info, seconds=time.perf_counter() - start)
