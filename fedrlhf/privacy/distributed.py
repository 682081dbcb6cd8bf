"""Distributed user-level DP over secure groups: each device adds its share of the noise.

With secure aggregation the server learns only the *sum* of a group's updates, so the
Gaussian noise that central DP-FedAvg adds at the server can instead be added by the
devices, each a share, before masking (Kairouz, Liu, Steinke 2021 do this with discrete
Gaussians; here the shares are continuous Gaussians, quantized by SecAgg+ afterwards). No
one, not even the server, ever holds a noise-free sum.

A group of ``n`` devices releases its sum only if at least ``t`` (the SecAgg+
reconstruction threshold) of them survive the protocol. Each device adds
``N(0, (z * C)^2 / t)`` per coordinate to its update clipped to L2 norm ``C``; any released
sum therefore holds the noise of at least ``t`` devices, of variance at least
``(z * C)^2``: a Gaussian mechanism of noise multiplier ``z`` on a sum in which one user
changes at most ``C``. Every user sits in exactly one group per round, so a round is one
such mechanism per user (parallel composition), and over rounds with client sampling rate
``q = clients_per_round / population`` the server's :class:`UserLevelAccountant` composes
``(z, q)`` per round, exactly as for server-side DP-FedAvg.

What this protects against: an honest-but-curious server (it sees only noised group sums)
and anyone who later reads the global models. What it does not: devices that skip their
share of the noise (each missing share lowers the group's noise by ``1 / t`` of its
variance), a server that lies about the group's threshold, and a device's own data being
inferred by its fellow group members from the final models beyond the stated epsilon.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from fedrlhf.errors import ConfigError


def device_noise_std(*, noise_multiplier: float, clip_norm: float, survivors: int) -> float:
    """Std per coordinate of one device's noise share, so that ``survivors`` shares sum to z * C."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"clip_norm must be finite and > 0, got {clip_norm!r}")
    if isinstance(survivors, bool) or not isinstance(survivors, int) or survivors < 1:
        raise ConfigError(f"survivors must be an integer >= 1, got {survivors!r}")
    return noise_multiplier * clip_norm / math.sqrt(survivors)


def add_noise_share(update: np.ndarray, std: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """``update`` plus Gaussian noise of ``std`` per coordinate (float32).

    Without ``rng`` the noise is drawn from a generator seeded by the OS's entropy: a seed the
    server chose (such as the round's client seed) would let it subtract the noise again.
    """
    if std == 0:
        return update.astype(np.float32)
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    return (update.astype(np.float64) + rng.normal(0.0, std, size=update.shape)).astype(np.float32)


def noise_norm_bound(
    *, noise_multiplier: float, clip_norm: float, survivors: int, size: int, members: int
) -> float:
    """A norm the noise of a group *mean* stays below (its expected norm plus 6 stds of it).

    ``members`` surviving devices each add a share of std ``s``: their mean carries noise of std
    ``s / sqrt(members)`` per coordinate, whose norm over ``size`` coordinates is about that
    times ``sqrt(size)``, with a std of about that over ``sqrt(2)``.
    """
    share = device_noise_std(noise_multiplier=noise_multiplier, clip_norm=clip_norm, survivors=survivors)
    sigma = share / math.sqrt(max(members, 1))
    return sigma * (math.sqrt(size) + 6.0)
