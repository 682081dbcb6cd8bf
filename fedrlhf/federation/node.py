"""What a client node knows of itself: its data directory and its torch threads.

Shared by the plain ClientApp (:mod:`fedrlhf.federation.client_app`) and the client
side of secure rounds (:mod:`fedrlhf.federation.secure`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context

from fedrlhf.training.device import DeviceDir


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
