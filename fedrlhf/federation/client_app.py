"""The Flower ClientApp: a device trains on its own feedback and replies with its update.

Every setting arrives in the message's ``config`` record (the server's run
config, flat), so the same app serves simulations and deployments.  A node
finds its data directory from ``node_config["device-dir"]`` (deployment:
``flower-supernode --node-config "device-dir=/path"``) or from the simulation's
clients directory and its ``partition-id``.  Failures become error replies, not
crashes (Flower's convention), and the server counts them as dropped.  A round the
device's privacy policy or budget refuses (``client.json``, see
:class:`~fedrlhf.privacy.policy.DevicePrivacyPolicy`) is an error reply with code
:data:`PRIVACY_REFUSED` and the reason, before any training.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrlhf.aggregation import clip_named
from fedrlhf.errors import PrivacyBudgetExceeded, PrivacyPolicyError
from fedrlhf.federation.payload import from_array_record, run_config_from_record, to_array_record
from fedrlhf.federation.secure import handle_secure_message
from fedrlhf.training.device import DeviceDir, RoundSpec, client_evaluate, client_round

app = ClientApp()

PRIVACY_REFUSED = 1001
"""Error code of a train reply the device's privacy policy or budget refused (Flower's codes are < 100)."""


def device_dir(context: Context, config: ConfigRecord) -> DeviceDir:
    """This node's data directory."""
    if "device-dir" in context.node_config:
        return DeviceDir(Path(str(context.node_config["device-dir"])))
    root = str(config.get("clients-dir", ""))
    if not root:
        raise ValueError("no device directory: start the SuperNode with --node-config 'device-dir=/path'")
    return DeviceDir(Path(root) / client_name(int(context.node_config["partition-id"])))


def client_name(index: int) -> str:
    """Directory name of simulated client ``index``."""
    return f"user-{index:05d}"  # same naming as fedrlhf.simulation.cohorts.user_id


def _drops(seed: int, round_: int, device: str, fraction: float, kind: str = "dropout") -> bool:
    """Deterministic simulated failure: the same clients fail in a rerun or a resume."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}/{round_}/{device}/{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _int(config: ConfigRecord, key: str) -> int:
    """An integer setting of the server's config record; a clear error if it is not one."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"the server's config has no integer {key!r} (got {value!r})")
    return int(value)


def _metric_record(metrics: Mapping[str, float]) -> MetricRecord:
    values: dict[str, int | float | list[int] | list[float]] = {k: float(v) for k, v in metrics.items()}
    return MetricRecord(values)


def _threads() -> None:
    import torch

    n = int(os.environ.get("FEDRLHF_CLIENT_THREADS", "1"))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server this node's stable device id (Flower node ids change between runs)."""
    config = msg.content.config_records["config"]
    return Message(
        RecordDict({"config": ConfigRecord({"device-id": device_dir(context, config).root.name})}),
        reply_to=msg,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round: returns the global-part delta and training metrics (SecAgg+ messages: masked)."""
    reply = handle_secure_message(msg, context)
    if reply is not None:
        return reply
    _threads()
    config = msg.content.config_records["config"]
    cfg = run_config_from_record(config)
    device = device_dir(context, config)
    round_ = _int(config, "round")
    if _drops(cfg.federation.seed, round_, device.root.name, cfg.federation.dropout):
        raise RuntimeError(f"simulated dropout of {device.root.name} in round {round_}")
    if _drops(cfg.federation.seed, round_, device.root.name, cfg.federation.stragglers, "straggler"):
        time.sleep(cfg.federation.straggler_delay)  # a slow device: the server's timeout decides
    spec = RoundSpec(
        round=round_,
        seed=_int(config, "client-seed"),
        local_epochs=cfg.federation.local_epochs,
        personal=cfg.federation.personal,
        personal_epochs=cfg.federation.personal_epochs,
        evaluate=bool(config.get("evaluate", True)),
        rounds=cfg.federation.rounds,
    )
    try:  # the device's own policy and budget bind: a round that breaks them is refused, not trained
        delta, metrics = client_round(
            device,
            from_array_record(msg.content.array_records["arrays"]),
            spec,
            model_cfg=cfg.model,
            train_cfg=cfg.train,
            privacy=cfg.privacy,
        )
    except (PrivacyPolicyError, PrivacyBudgetExceeded) as exc:
        return Message(Error(code=PRIVACY_REFUSED, reason=f"{device.root.name}: {exc}"), reply_to=msg)
    if cfg.robust.client_clip_norm:  # the server rejects anything larger as proof of an attacker
        delta = clip_named(delta, max_norm=cfg.robust.client_clip_norm)
    content = RecordDict(
        {
            "arrays": to_array_record(delta),
            "metrics": _metric_record(metrics),
            "config": ConfigRecord({"device-id": device.root.name}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the global model (and the personal one) on the device's own test feedback."""
    _threads()
    config = msg.content.config_records["config"]
    cfg = run_config_from_record(config)
    arrays = from_array_record(msg.content.array_records["arrays"])
    metrics = client_evaluate(device_dir(context, config), arrays, model_cfg=cfg.model)
    return Message(RecordDict({"metrics": _metric_record(metrics)}), reply_to=msg)
