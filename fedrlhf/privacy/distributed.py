"""Distributed DP over secure groups: each device adds its share of the noise.

User level (``secagg.dp_noise_multiplier``) is described first; record level
(``secagg.record_dp``, :func:`record_noise_multiplier`) at the end of this docstring.

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

Record level (``secagg.record_dp``, DP-FedSGD over secure groups): each round a device sends
the sum of its records' gradients at the global model, each clipped to C (one record changes
the sum by at most C; clipping the sum to ``secagg.clip_norm`` afterwards is a projection and
cannot raise that), plus its share ``N(0, (sigma * C)^2 / t)``. A released group sum is then a
Gaussian mechanism of noise multiplier sigma on every record of its members: one step of
central full-batch DP-GD per round, with a group's noise rather than a device's (local DP on
a device of n records adds that noise to a sum of n, a group to a sum of its members'). Each
device records ``(sigma, 1, 1)`` per round it takes part in, in its own ledger, and so owns its
guarantee (sample rate 1: it does not count on the server's sampling). Against whom it holds
is as above.
"""

from __future__ import annotations

import math
import secrets
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from fedrlhf.errors import ConfigError

if TYPE_CHECKING:
    from fedrlhf.config import PrivacyConfig


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


def record_noise_multiplier(privacy: PrivacyConfig, rounds: int) -> float:
    """sigma of record-level distributed DP: ``privacy.noise_multiplier``, else the smallest sigma
    (Opacus's search) at which ``rounds`` full-batch steps (sample rate 1) spend at most
    ``privacy.target_epsilon`` at ``privacy.delta`` with ``privacy.accountant``."""
    if privacy.noise_multiplier is not None:
        return float(privacy.noise_multiplier)
    if privacy.target_epsilon is None:
        raise ConfigError("secagg.record_dp needs privacy.target_epsilon or privacy.noise_multiplier")
    return _sigma_for(float(privacy.target_epsilon), float(privacy.delta), privacy.accountant, int(rounds))


@lru_cache(maxsize=64)
def _sigma_for(target_epsilon: float, delta: float, accountant: str, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=1.0,
                steps=steps,
                accountant=accountant,
            )
        )
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise ConfigError(
            f"privacy.target_epsilon={target_epsilon:g} cannot be reached in {steps} rounds at "
            f"delta={delta:g} ({exc}); raise the target or run fewer rounds"
        ) from None
