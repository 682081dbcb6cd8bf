"""The Flower ClientApp: a device trains on its own feedback and replies with its update.

The update is the reward model's trainable state or, when ``federation.task`` is ``dpo`` or
``kto``, the policy's LoRA (:mod:`fedrlhf.training.policy_task`).

Every setting arrives in the message's ``config`` record (the server's run
config, flat), so the same app serves simulations and deployments.  A node
finds its data directory from ``node_config["device-dir"]`` (deployment:
``flower-supernode --node-config "device-dir=/path"``) or from the simulation's
clients directory and its ``partition-id``.  Failures become error replies, not
crashes (Flower's convention), and the server counts them as dropped.  A round the
device's privacy policy or budget refuses (``client.json``, see
:class:`~fedrlhf.privacy.policy.DevicePrivacyPolicy`) is an error reply with code
:data:`PRIVACY_REFUSED` and the reason, before any training.

:data:`app` is the production app. :func:`make_app` builds the same app with Flower mods
around it: ``mods`` see every message, ``secure_mods`` run inside SecAgg+ on a secure
round's plaintext FitIns and FitRes, before masking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedrlhf.aggregation import clip_named
from fedrlhf.errors import ConfigError, PrivacyBudgetExceeded, PrivacyPolicyError
from fedrlhf.federation.node import client_name, client_threads, device_dir, train_device
from fedrlhf.federation.payload import from_array_record, run_config_from_record, to_array_record
from fedrlhf.federation.secure import handle_secure_message, secure_client_app
from fedrlhf.training.device import RoundSpec, client_evaluate
from fedrlhf.training.policy_task import policy_evaluate

__all__ = [
    "PRIVACY_REFUSED",
    "SETTINGS_REFUSED",
    "app",
    "client_name",
    "device_dir",
    "evaluate",
    "identify",
    "make_app",
    "train",
]

PRIVACY_REFUSED = 1001
SETTINGS_REFUSED = 1002
"""A round whose settings the device cannot train with (e.g. another ``model.max_length``)."""
"""Error code of a train reply the device's privacy policy or budget refused (Flower's codes are < 100)."""


def _int(config: ConfigRecord, key: str) -> int:
    """An integer setting of the server's config record; a clear error if it is not one."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"the server's config has no integer {key!r} (got {value!r})")
    return int(value)


def _metric_record(metrics: Mapping[str, float]) -> MetricRecord:
    values: dict[str, int | float | list[int] | list[float]] = {k: float(v) for k, v in metrics.items()}
    return MetricRecord(values)


def identify(msg: Message, context: Context) -> Message:
    """Tell the server this node's stable device id (Flower node ids change between runs)."""
    config = msg.content.config_records["config"]
    return Message(
        RecordDict({"config": ConfigRecord({"device-id": device_dir(context, config).root.name})}),
        reply_to=msg,
    )


def train(msg: Message, context: Context) -> Message:
    """One local round in plain mode: returns the global-part delta and training metrics."""
    client_threads()
    config = msg.content.config_records["config"]
    cfg = run_config_from_record(config)
    device = device_dir(context, config)
    spec = RoundSpec(
        round=_int(config, "round"),
        seed=_int(config, "client-seed"),
        local_epochs=cfg.federation.local_epochs,
        personal=cfg.federation.personal,
        personal_epochs=cfg.federation.personal_epochs,
        evaluate=bool(config.get("evaluate", True)),
        rounds=cfg.federation.rounds,
    )
    global_state = from_array_record(msg.content.array_records["arrays"])
    try:  # the device's own policy and budget bind: a round that breaks them is refused, not trained
        delta, metrics = train_device(cfg, device, global_state, spec)
    except (PrivacyPolicyError, PrivacyBudgetExceeded) as exc:
        return Message(Error(code=PRIVACY_REFUSED, reason=f"{device.root.name}: {exc}"), reply_to=msg)
    except ConfigError as exc:
        return Message(Error(code=SETTINGS_REFUSED, reason=f"{device.root.name}: {exc}"), reply_to=msg)
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


def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the global model (and the personal one) on the device's own test feedback."""
    client_threads()
    config = msg.content.config_records["config"]
    cfg = run_config_from_record(config)
    arrays = from_array_record(msg.content.array_records["arrays"])
    device = device_dir(context, config)
    try:
        if cfg.federation.task == "reward":
            metrics = client_evaluate(device, arrays, model_cfg=cfg.model)
        else:
            metrics = policy_evaluate(device, arrays, settings=cfg.policy)
    except ConfigError as exc:
        return Message(Error(code=SETTINGS_REFUSED, reason=f"{device.root.name}: {exc}"), reply_to=msg)
    return Message(RecordDict({"metrics": _metric_record(metrics)}), reply_to=msg)


def make_app(*, mods: Sequence[Mod] = (), secure_mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp: ``identify`` (query), ``train`` (plain, or SecAgg+ messages), ``evaluate``.

    ``mods`` wrap every message the app receives (SecAgg+ stage messages included);
    ``secure_mods`` wrap the client's training in a secure round, inside ``secaggplus_mod``:
    they see the plaintext FitIns and the FitRes before it is masked.
    """
    secure = secure_client_app(secure_mods)
    client = ClientApp(mods=list(mods))
    client.query()(identify)
    client.evaluate()(evaluate)

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        reply = handle_secure_message(msg, context, secure)
        return reply if reply is not None else train(msg, context)

    return client


app = make_app()
"""The production ClientApp (no mods)."""
