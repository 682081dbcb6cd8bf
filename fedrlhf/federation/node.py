"""What a client node knows of itself: its data directory, its torch threads, its task.

Shared by the plain ClientApp (:mod:`fedrlhf.federation.client_app`) and the client
side of secure rounds (:mod:`fedrlhf.federation.secure`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Context

from fedrlhf.training.device import DeviceDir

if TYPE_CHECKING:
    from fedrlhf.config import RunConfig
    from fedrlhf.training.device import RoundSpec


def device_dir(context: Context, config: Mapping[str, object]) -> DeviceDir:
    """This node's data directory.

    A deployed SuperNode names it (``flower-supernode --node-config "device-dir=/path"``); a
    simulated node finds it in the server's ``clients-dir`` under its ``partition-id``.
    """
    if "device-dir" in context.node_config:
        return DeviceDir(Path(str(context.node_config["device-dir"])))
    root = str(config.get("clients-dir", ""))
    if not root:
        raise ValueError("no device directory: start the SuperNode with --node-config 'device-dir=/path'")
    return DeviceDir(Path(root) / client_name(int(context.node_config["partition-id"])))


def client_name(index: int) -> str:
    """Directory name of simulated client ``index``."""
    return f"user-{index:05d}"  # same naming as fedrlhf.simulation.cohorts.user_id


def client_threads() -> None:
    """Set torch's threads to ``FEDRLHF_CLIENT_THREADS`` (default 1): one per simulated client."""
    import torch

    n = int(os.environ.get("FEDRLHF_CLIENT_THREADS", "1"))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def train_device(
    cfg: RunConfig,
    device: DeviceDir,
    global_state: dict[str, np.ndarray],
    spec: RoundSpec,
    *,
    noise_multiplier: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The device's round for ``cfg.federation.task``: (update of the global part, metrics).

    ``reward``: :func:`~fedrlhf.training.device.client_round`, or with ``secagg.record_dp`` the
    clipped gradient sum of :func:`~fedrlhf.training.fedsgd.gradient_round` (noise multiplier
    ``noise_multiplier``); ``dpo`` / ``kto``: the policy LoRA's
    :func:`~fedrlhf.training.policy_task.policy_round`, or with ``secagg.record_dp`` its clipped
    gradient sum (:func:`~fedrlhf.training.policy_task.policy_gradient_round`). Plain and secure
    rounds both call it.
    ``train.lr`` follows ``federation.client_lr_schedule`` over the rounds.
    """
    from fedrlhf.config import client_lr_scale
    from fedrlhf.training.device import client_round
    from fedrlhf.training.fedsgd import gradient_round
    from fedrlhf.training.policy_task import policy_gradient_round, policy_round

    train_cfg = dataclasses.replace(cfg.train, lr=cfg.train.lr * client_lr_scale(cfg.federation, spec.round))
    if cfg.federation.task != "reward":
        if cfg.secagg.enabled and cfg.secagg.record_dp:
            return policy_gradient_round(
                device,
                global_state,
                spec,
                task=cfg.federation.task,
                settings=cfg.policy,
                privacy=cfg.privacy,
                noise_multiplier=noise_multiplier,
            )
        return policy_round(
            device,
            global_state,
            spec,
            task=cfg.federation.task,
            settings=cfg.policy,
            train_cfg=train_cfg,
            privacy=cfg.privacy,
        )
    if cfg.secagg.enabled and cfg.secagg.record_dp:
        return gradient_round(
            device,
            global_state,
            spec,
            model_cfg=cfg.model,
            train_cfg=train_cfg,
            privacy=cfg.privacy,
            noise_multiplier=noise_multiplier,
        )
    return client_round(
        device, global_state, spec, model_cfg=cfg.model, train_cfg=train_cfg, privacy=cfg.privacy
    )
