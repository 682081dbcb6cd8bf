"""The simulation's ClientApp: the production app with simulated devices' misbehaviour as Flower mods.

``fedrlhf simulate`` (and ``flwr run .``'s simulated cohort) run :data:`app`, which is
:func:`fedrlhf.federation.client_app.make_app` with two mods; the federation package knows
nothing of either:

- :func:`simulated_failures` wraps every message: the seeded ``federation.dropout`` share of
  the sampled devices fails its training round, and the ``federation.stragglers`` share sleeps
  ``federation.straggler_delay`` seconds first. In plain mode that is the train message; in
  secure mode the SecAgg+ stage that trains and masks (collect masked vectors), so a dropout
  comes after the device shared its keys, mid-protocol.
- :func:`coalition_forgery` runs inside SecAgg+ (secure mode only): a device that
  :func:`fedrlhf.simulation.threats.poison_cohort` marked as a coalition member replies with
  its forged update (:func:`fedrlhf.simulation.threats.forged_update`) instead of training,
  and SecAgg+ masks that. In plain mode update attacks replace updates at the server instead
  (:func:`fedrlhf.simulation.threats.update_hook`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedrlhf.federation.client_app import make_app
from fedrlhf.federation.node import client_threads, device_dir
from fedrlhf.federation.payload import run_config_from_record
from fedrlhf.federation.secure import encode_metrics, is_secure_message, param_names, plain_metrics
from fedrlhf.simulation.threats import forged_update


def drops(seed: int, round_: int, device: str, fraction: float, kind: str = "dropout") -> bool:
    """Deterministic simulated failure: the same clients fail in a rerun or a resume."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}/{round_}/{device}/{kind}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _training_config(msg: Message) -> Mapping[str, Any] | None:
    """The round's config of a message that trains: a plain train message's ``config`` record, or
    the FitIns of SecAgg+'s collect-masked-vectors stage; None for any other message."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    if not is_secure_message(msg):
        return msg.content.config_records["config"]
    if any(key.startswith("fitins.") for key in msg.content.keys()):
        return compat.recorddict_to_fitins(msg.content, keep_input=True).config
    return None  # another SecAgg+ stage (setup, share keys, unmask): nothing trains in it


def simulated_failures(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: a seeded share of the devices drops out of (raises in) a round, another is slow."""
    config = _training_config(msg)
    if config is not None:
        fed = run_config_from_record(config).federation  # type: ignore[arg-type]
        device, round_ = device_dir(context, config).root.name, int(config["round"])
        if drops(fed.seed, round_, device, fed.dropout):
            raise RuntimeError(f"simulated dropout of {device} in round {round_}")
        if drops(fed.seed, round_, device, fed.stragglers, "straggler"):
            time.sleep(fed.straggler_delay)  # a slow device: the server's or the protocol's timeout decides
    return call_next(msg, context)


def coalition_forgery(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod inside SecAgg+: a coalition member's FitRes is its forged update, unclipped, and
    the metrics of its own honest training; any other device trains as usual."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    device = device_dir(context, fitins.config)
    if "coalition" not in device.meta():
        return call_next(msg, context)
    client_threads()
    cfg = run_config_from_record(fitins.config)  # type: ignore[arg-type]
    arrays = parameters_to_ndarrays(fitins.parameters)
    names = param_names(fitins.config, len(arrays))
    global_state = dict(zip(names, arrays, strict=True))
    forged, metrics = forged_update(device, global_state, names, cfg, int(fitins.config["round"]))
    res = FitRes(
        status=Status(code=Code.OK, message="Success"),  # as Flower's NumPyClient reports a fit
        parameters=ndarrays_to_parameters([forged, encode_metrics(metrics, cfg.secagg.range)]),
        num_examples=1,
        metrics=plain_metrics(metrics),
    )
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


app = make_app(mods=[simulated_failures], secure_mods=[coalition_forgery])
"""The ClientApp of simulated cohorts."""
