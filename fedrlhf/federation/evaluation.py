"""Evaluating and saving the global model: on the devices' data, on a held-out set, as a model directory.

:func:`federated_evaluate` sends it to the devices (a Flower ``EVALUATE`` round) after the last
round; :func:`server_evaluate` scores it on the operator's ``federation.test_data`` every round;
:func:`save_global_model` writes it where ``RewardModel`` (or ``PolicyModel``) loads it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrlhf.config import RunConfig
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.federation.payload import run_config_record, scalar_metrics, to_array_record
from fedrlhf.training.device import worker_model


def federated_evaluate(
    grid: Grid, cfg: RunConfig, state: ServerState, nodes: dict[str, int]
) -> dict[str, Any]:
    """Send the global model to (up to) clients_per_round devices for evaluation on their own data."""
    devices = sorted(nodes)
    rng = np.random.default_rng([cfg.federation.seed, state.round, 0xE7A1])
    k = min(cfg.federation.clients_per_round, len(devices))
    sampled = [devices[i] for i in sorted(rng.choice(len(devices), size=k, replace=False))]
    arrays = to_array_record(state.global_state)
    config = run_config_record(cfg, **{"clients-dir": cfg.federation.clients_dir})
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": config}),
            dst_node_id=nodes[d],
            message_type=MessageType.EVALUATE,
        )
        for d in sampled
    ]
    metrics = [
        scalar_metrics(r.content.metric_records["metrics"])
        for r in grid.send_and_receive(messages, timeout=cfg.federation.timeout)
        if not r.has_error() and "metrics" in r.content.metric_records
    ]
    return {
        "clients": len(metrics),
        "global_accuracy": mean_metric(metrics, "global_accuracy"),
        "personal_accuracy": mean_metric(metrics, "personal_accuracy"),
    }


def server_evaluate(cfg: RunConfig, global_state: dict[str, np.ndarray]) -> float | None:
    """Accuracy of the global model on the operator's held-out set, if it has one (a policy's:
    implicit-reward accuracy, how often beta * log(pi / pi_ref) ranks the chosen answer first)."""
    if not cfg.federation.test_data:
        return None
    if cfg.federation.task != "reward":
        from fedrlhf.training.policy_task import heldout_accuracy

        return heldout_accuracy(cfg.policy, global_state, Path(cfg.federation.test_data))
    from fedrlhf.feedback import read_feedback
    from fedrlhf.models.state import set_trainable_state
    from fedrlhf.training.data import encode_cached
    from fedrlhf.training.evaluate import evaluate

    model, _ = worker_model(cfg.model)
    set_trainable_state(model, global_state)
    model.use_personal(False)
    path = Path(cfg.federation.test_data)
    data = encode_cached(
        read_feedback(path).records, model.tokenizer, cfg.model.max_length, path.parent / ".fedrlhf-cache"
    )
    return evaluate(model, data).accuracy


def save_global_model(cfg: RunConfig, global_state: dict[str, np.ndarray], path: Path) -> None:
    """Write the global reward model as a directory loadable by ``RewardModel.from_pretrained``
    (dpo / kto: the policy, loadable by ``PolicyModel.from_pretrained``)."""
    from fedrlhf.models.state import set_trainable_state

    if cfg.federation.task != "reward":
        from fedrlhf.training.policy_task import save_policy

        save_policy(cfg.policy, global_state, path)
        return

    model, _ = worker_model(cfg.model)
    set_trainable_state(model, global_state)
    model.save_pretrained(path)


def mean_metric(metrics: list[dict[str, float]], key: str) -> float | None:
    """The mean of ``key`` over the metrics that hold a finite value of it; None if none does."""
    values = [m[key] for m in metrics if key in m and math.isfinite(m[key])]
    return float(np.mean(values)) if values else None
