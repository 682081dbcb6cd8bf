"""User-level DP at the server: DP-FedAvg (McMahan et al. 2018) math, numpy only.

Each sampled client's model update is clipped to L2 norm ``clip_norm``; the server
sums the clipped updates, divides by the *expected* number of clients and adds
Gaussian noise of std ``noise_multiplier * clip_norm / num_clients_expected``. One
client (all its data) is then the unit of privacy, and each round is one step of
the sampled Gaussian mechanism with sampling rate ``clients_per_round / population``,
which :class:`UserLevelAccountant` composes with Opacus's RDP accountant.

These are the flwr-free core and the test reference for the federation glue.
Flower's ``flwr.supercore.differential_privacy`` has the same clip and noise
formulas (``clip_inputs_inplace``, ``compute_stdv``) but uses the global NumPy RNG.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from opacus.accountants import IAccountant  # type: ignore[import-untyped]  # opacus ships no py.typed / stubs

from fedrlhf.errors import ConfigError
from fedrlhf.privacy.ledger import ACCOUNTANTS, compose_epsilon, make_accountant, validate_mechanism


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")


def clip_update(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """Scale ``update`` (any shape) down to L2 norm ``clip_norm`` if it is longer.

    Returns ``(clipped, was_clipped)``; ``clipped`` is a new array of the input dtype.
    A zero update is returned unchanged (Flower's version divides by its zero norm).
    """
    _check_positive("clip_norm", clip_norm)
    update = np.asarray(update)
    norm = float(np.linalg.norm(update.astype(np.float64, copy=False).ravel()))
    if not math.isfinite(norm):
        raise ValueError("update contains NaN or inf; refusing to clip it")
    if norm <= clip_norm:
        return update.copy(), False
    return (update * (clip_norm / norm)).astype(update.dtype, copy=False), True


def noise_std(*, noise_multiplier: float, clip_norm: float, num_clients_expected: float) -> float:
    """Std of the Gaussian noise on the *mean* update: ``noise_multiplier * clip_norm / n``.

    Same as Flower's ``compute_stdv``.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    _check_positive("clip_norm", clip_norm)
    _check_positive("num_clients_expected", num_clients_expected)
    return noise_multiplier * clip_norm / num_clients_expected


def add_gaussian_noise(
    aggregate_sum: np.ndarray,
    *,
    noise_multiplier: float,
    clip_norm: float,
    num_clients_expected: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The noised mean update: ``aggregate_sum / n + N(0, (noise_multiplier * clip_norm / n)^2)``.

    ``aggregate_sum`` is the sum of the *clipped* updates of the clients that reported;
    ``n = num_clients_expected`` is the expected number per round (clients_per_round,
    i.e. sample_rate * population), not the number that reported. This is the
    fixed-denominator estimator of DP-FedAvg: with a data-independent denominator,
    adding or removing one client moves the mean by at most ``clip_norm / n``, so the
    noise std ``noise_multiplier * clip_norm / n`` gives exactly the ``noise_multiplier``
    the accountant charges for. Dividing by the reported count would make the
    sensitivity depend on who dropped out. The price is a mean biased toward 0 when
    fewer clients than expected report.
    """
    std = noise_std(
        noise_multiplier=noise_multiplier, clip_norm=clip_norm, num_clients_expected=num_clients_expected
    )
    total = np.asarray(aggregate_sum)
    dtype = total.dtype if np.issubdtype(total.dtype, np.floating) else np.float64
    mean = total.astype(np.float64) / num_clients_expected
    if std > 0:
        mean = mean + rng.normal(0.0, std, size=mean.shape)
    return mean.astype(dtype, copy=False)


def client_sample_rate(*, clients_per_round: int, population: int) -> float:
    """Per-round client sampling rate ``q = clients_per_round / population``."""
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise ConfigError(f"population must be an integer >= 1, got {population!r}")
    if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int):
        raise ConfigError(f"clients_per_round must be an integer, got {clients_per_round!r}")
    if not 1 <= clients_per_round <= population:
        raise ConfigError(
            f"clients_per_round must be in [1, population={population}], got {clients_per_round!r}"
        )
    return clients_per_round / population


def update_clip_norm(
    clip_norm: float, fraction_clipped: float, *, target_quantile: float, learning_rate: float
) -> float:
    """Adaptive clipping (Andrew et al. 2021, Alg. 1): one geometric step of the clip norm.

    ``target_quantile`` is the paper's gamma: the quantile of client update norms the
    clip norm should track, i.e. the fraction of updates that should come in *unclipped*
    (0.5 tracks the median). ``fraction_clipped`` is this round's fraction of updates
    whose norm exceeded ``clip_norm``, already noised by the caller (it is a release
    about the clients too). With the unclipped fraction ``b = 1 - fraction_clipped``
    the paper's step is ``clip_norm * exp(-learning_rate * (b - target_quantile))``:
    too many clipped -> the norm grows, too few -> it shrinks.

    The new norm applies from the *next* round: this round's noise must use the norm
    it clipped with.
    """
    _check_positive("clip_norm", clip_norm)
    _check_positive("learning_rate", learning_rate)
    if not 0 <= target_quantile <= 1:
        raise ConfigError(f"target_quantile must be in [0, 1], got {target_quantile!r}")
    if not math.isfinite(fraction_clipped):
        raise ConfigError(f"fraction_clipped must be finite, got {fraction_clipped!r}")
    unclipped = 1.0 - fraction_clipped
    return clip_norm * math.exp(-learning_rate * (unclipped - target_quantile))


class UserLevelAccountant:
    """Server-side accountant of user-level DP: one Opacus step per round.

    Each round is a sampled Gaussian mechanism with sampling rate
    ``q = clients_per_round / population``. Opacus's accountants assume Poisson
    sampling; Flower samples a fixed number of clients without replacement, for
    which the Poisson RDP bound is the standard approximation (as in McMahan et al.).
    """

    def __init__(self, *, accountant: str = "rdp") -> None:
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {sorted(ACCOUNTANTS)}, got {accountant!r}")
        self.accountant = accountant
        self.history: list[tuple[float, float, int]] = []

    @property
    def rounds(self) -> int:
        """Rounds accounted so far."""
        return sum(steps for _, _, steps in self.history)

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Account one round (merges with the previous entry like Opacus's ``step``)."""
        validate_mechanism(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=1)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history[-1]
            self.history[-1] = (sigma, q, steps + 1)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), 1))

    def epsilon(self, delta: float) -> float:
        """Epsilon over all rounds at ``delta`` (``inf`` if any round had no noise)."""
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
        return compose_epsilon(self.history, accountant=self.accountant, delta=delta)

    def to_opacus(self) -> IAccountant:
        """A fresh Opacus accountant with this history."""
        return make_accountant(self.history, accountant=self.accountant)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for server checkpoints."""
        return {"accountant": self.accountant, "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserLevelAccountant:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on malformed state."""
        try:
            acc = cls(accountant=data["accountant"])
            history = [(float(s), float(q), int(n)) for s, q, n in data["history"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed user-level accountant state: {exc}") from exc
        for sigma, q, steps in history:
            validate_mechanism(noise_multiplier=sigma, sample_rate=q, steps=steps)
        acc.history = history
        return acc
