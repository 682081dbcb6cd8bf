"""The seed a device trains with in a round: the server sends it, so a rerun or a resume repeats it."""

from __future__ import annotations

import zlib

from fedrlhf.config import RunConfig


def client_seed(cfg: RunConfig, round_: int, device: str) -> int:
    """Training seed of ``device`` in ``round_``, from ``federation.seed``: fixed per (run, round, device)."""
    return (cfg.federation.seed * 1_000_003 + round_ * 7919 + zlib.crc32(device.encode())) % 2**31
