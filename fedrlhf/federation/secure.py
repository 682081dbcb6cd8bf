"""Secure *and* robust aggregation: SecAgg+ within random groups, the robust rule over group means.

Each round the server splits the sampled clients at random into groups of at
least ``secagg.min_group_size`` (:func:`fedrlhf.aggregation.make_groups`) and
runs Flower's legacy ``SecAggPlusWorkflow`` once per group, with a legacy
strategy whose ``configure_fit`` returns only that group's nodes and whose
``aggregate_fit`` records the unmasked aggregate. The server thus learns one
mean per group and never an individual update; ``robust.rule`` runs over the
group means, so a Byzantine client spoils at most its own group.

Weights are the server's, not the clients': every client reports
``num_examples = 1`` under ``max_weight = 1``, so a group mean is the plain mean
of its surviving members' updates. The reported weights arrive in plaintext
(only the arrays are masked): a group in which anyone reports another weight is
discarded and the client flagged. Clients clip their update to L2 norm
``secagg.clip_norm`` before masking; since ``clipping_range >= clip_norm``, the
quantization never clips an honest coordinate, and a group mean whose norm
exceeds ``clip_norm`` (plus quantization error) proves a misbehaving member and
is discarded too: every accepted group mean has norm <= clip_norm, whatever its
members sent. Per coordinate, a group mean is exact to within
``2 * clipping_range / quantization_range`` (stochastic rounding).

The groups run concurrently (one thread each, their Grid calls serialized), so
a round lasts about as long as its slowest group, not the sum of the groups.

Besides the masked update, each client sends a few training metrics masked the
same way (the server learns only their group means) and, in plaintext, its
record-level DP epsilon, if any, for the privacy report.

Client side: :func:`handle_secure_message` runs SecAgg+ messages through an
inner legacy ``ClientApp`` with ``secaggplus_mod`` (:func:`secure_client_app`); call it
first in the new-API ``@app.train``. Mods given to :func:`secure_client_app` run inside
``secaggplus_mod``, around the client's training: they see its plaintext FitIns and
FitRes, before masking.

Test hooks (in :mod:`fedrlhf.federation.secure_server`): :data:`on_aggregate_input`
sees exactly the vectors handed to the robust rule, :data:`on_server_receive` every
reply the server receives during the secure protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
from flwr.app import Context, Message
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common import Scalar
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedrlhf.aggregation import clip_to_norm
from fedrlhf.config import SecAggConfig
from fedrlhf.federation.node import client_threads, device_dir, train_device
from fedrlhf.federation.payload import run_config_from_record
from fedrlhf.federation.secure_protocol import (
    PARAM_NAMES_KEY,
    SURVIVORS_KEY,
    SecureRoundResult,
    noise_parameters,
)
from fedrlhf.federation.secure_server import decode_metrics, encode_metrics, secure_round
from fedrlhf.privacy.distributed import add_noise_share, device_noise_std

__all__ = [
    "PARAM_NAMES_KEY",
    "SURVIVORS_KEY",
    "SecureRoundResult",
    "decode_metrics",
    "encode_metrics",
    "handle_secure_message",
    "is_secure_message",
    "noise_parameters",
    "param_names",
    "plain_metrics",
    "secure_client_app",
    "secure_payload",
    "secure_round",
]


# ----------------------------------------------------------------------------- client side


def is_secure_message(msg: Message) -> bool:
    """True for a SecAgg+ stage message or a legacy FitIns message."""
    content = msg.content
    legacy = any(key.startswith("fitins.") for key in content.keys())
    return legacy or RECORD_KEY_CONFIGS in content.config_records


def handle_secure_message(msg: Message, context: Context, app: ClientApp | None = None) -> Message | None:
    """Reply to a SecAgg+ message through the inner legacy ``app`` (default: :func:`secure_client_app`
    without mods); None if ``msg`` is not one.

    ``secaggplus_mod`` keeps its protocol state in ``context.state`` between the four stages.
    """
    if not is_secure_message(msg):
        return None
    return (app if app is not None else _LEGACY_APP)(msg, context)


def secure_client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """The inner legacy ClientApp of secure rounds: ``secaggplus_mod``, then ``mods``, then training.

    ``secaggplus_mod`` calls inward only at its collect-masked-vectors stage, so ``mods`` see
    the round's plaintext FitIns (the global arrays and the round's config) and may return
    another FitRes, which is then masked as it stands.
    """
    return ClientApp(client_fn=_client_fn, mods=[secaggplus_mod, *mods])


class _SecureClient(NumPyClient):
    """The legacy client behind secaggplus_mod: trains, clips, returns the flat delta with weight 1."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        from fedrlhf.training.device import RoundSpec

        client_threads()
        cfg = run_config_from_record(config)  # type: ignore[arg-type]
        device = device_dir(self.context, config)
        round_ = int(config["round"])
        names = param_names(config, len(parameters))
        global_state = dict(zip(names, parameters, strict=True))
        fed = cfg.federation
        spec = RoundSpec(
            round=round_,
            seed=int(config["client-seed"]),
            local_epochs=fed.local_epochs,
            personal=fed.personal,
            personal_epochs=fed.personal_epochs,
            evaluate=bool(config.get("evaluate", True)),
            rounds=fed.rounds,
        )
        z, clip = noise_parameters(cfg)  # distributed DP: this device's share of the group's noise
        delta, metrics = train_device(cfg, device, global_state, spec, noise_multiplier=z)
        survivors = int(cast(int, config.get(SURVIVORS_KEY, 1)))
        noise = device_noise_std(noise_multiplier=z, clip_norm=clip, survivors=survivors) if z else 0.0
        return secure_payload(delta, names, metrics, cfg.secagg, noise), 1, plain_metrics(metrics)


def param_names(config: Mapping[str, Scalar], arrays: int) -> list[str]:
    """The layout names a secure round's FitIns config gives its ``arrays`` global arrays."""
    names = str(config[PARAM_NAMES_KEY]).split(",")
    if len(names) != arrays:
        raise ValueError(f"{arrays} arrays for {len(names)} parameter names")
    return names


def secure_payload(
    delta: Mapping[str, np.ndarray],
    names: list[str],
    metrics: Mapping[str, float],
    s: SecAggConfig,
    noise_std: float = 0.0,
) -> list[np.ndarray]:
    """What a client masks: its delta flat in ``names`` order clipped to ``clip_norm`` (plus its
    distributed-DP noise share of ``noise_std`` per coordinate), and its metrics."""
    flat = np.concatenate([np.ravel(delta[n]) for n in names]).astype(np.float32)
    update = add_noise_share(clip_to_norm(flat, max_norm=s.clip_norm), noise_std)
    return [update.astype(np.float32), encode_metrics(metrics, s.range)]


def plain_metrics(metrics: Mapping[str, float]) -> dict[str, Scalar]:
    """The only values a client sends unmasked: its record-level DP epsilon, for the privacy report."""
    return {"epsilon": float(metrics["epsilon"])} if "epsilon" in metrics else {}


def _client_fn(context: Context) -> Client:
    return _SecureClient(context).to_client()


_LEGACY_APP = secure_client_app()
