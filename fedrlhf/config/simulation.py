"""(Simulation) who the clients are and which of them attack."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedrlhf.config.base import _integer, _positive
from fedrlhf.errors import ConfigError


@dataclass(frozen=True)
class CohortConfig:
    """Who the simulated clients are.

    Attributes:
        kind: ``synthetic`` (users mixing preference archetypes, known ground truth) or
            ``jsonl`` (a preference file partitioned over clients).
        num_clients: cohort size (clients at rest on disk; memory does not grow with it).
        data: JSONL / JSONL.gz path for ``jsonl`` cohorts.
        partition: ``iid`` or ``dirichlet`` (over clusters of prompts) for ``jsonl``.
        alpha: Dirichlet concentration (small = non-IID).
        num_clusters: ``dirichlet`` on ``jsonl``: k of the k-means over the prompts, the clusters
            whose shares the Dirichlet deals out.
        test_fraction: each client's held-out share (personal accuracy), and for
            ``jsonl`` the share of the file kept as the global test set.
        pairs_per_user, test_pairs_per_user: synthetic users' data sizes.
        minority_share: synthetic prior share of the minority archetype (0 = uniform).
        beta: synthetic users' consistency (Bradley-Terry inverse temperature): larger means
            fewer clicks against a user's own utility (label noise), so higher Bayes accuracy.
        benign_refusal_rate: synthetic share of responses to benign prompts that refuse (every
            user dislikes them: the preference all users share).
        limit: use only the first N records of ``data`` (0 = all).
        client_test_fraction: for ``jsonl`` cohorts, each client's own held-out share
            (0 = clients keep everything for training; no personal accuracy then).
        encrypted_store: materialise each client's training feedback into an encrypted
            on-device store (``feedback.db`` + a 0600 key file), as a real device keeps it;
            training then reads from the store and marks the rounds that used each record.
        responses: synthetic pairs' two responses: ``rendered`` from attribute bits by the
            cohort's templates, or ``policy``: two of the base policy's own answers to the
            prompt that the user's utility tells apart, labelled by the same click model (the
            pairs a device collects when its user picks between two answers of the app's
            policy; ``dpo`` / ``kto`` tasks; :mod:`fedrlhf.simulation.policy_pairs`).
        policy_samples: with ``responses = "policy"``, answers the base policy writes to each
            prompt of the cohort's bank (once per run, cached); a pair's two come from them.
    """

    kind: str = "synthetic"
    num_clients: int = 10
    data: str = ""
    partition: str = "iid"
    alpha: float = 0.5
    num_clusters: int = 8
    test_fraction: float = 0.2
    pairs_per_user: int = 24
    test_pairs_per_user: int = 8
    minority_share: float = 0.0
    beta: float = 2.0
    benign_refusal_rate: float = 0.1
    limit: int = 0
    client_test_fraction: float = 0.2
    encrypted_store: bool = False
    responses: str = "rendered"
    policy_samples: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ("synthetic", "jsonl"):
            raise ConfigError(f"cohort.kind must be 'synthetic' or 'jsonl', got {self.kind!r}")
        if self.kind == "jsonl" and not self.data:
            raise ConfigError("cohort.data must name a preference JSONL file when cohort.kind = 'jsonl'")
        if self.partition not in ("iid", "dirichlet"):
            raise ConfigError(f"cohort.partition must be 'iid' or 'dirichlet', got {self.partition!r}")
        _integer("cohort.num_clients", self.num_clients, minimum=1)
        _positive("cohort.alpha", self.alpha)
        _integer("cohort.num_clusters", self.num_clusters, minimum=1)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"cohort.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        _integer("cohort.pairs_per_user", self.pairs_per_user, minimum=1)
        _integer("cohort.test_pairs_per_user", self.test_pairs_per_user, minimum=1)
        if not 0 <= self.minority_share < 1:
            raise ConfigError(f"cohort.minority_share must be in [0, 1), got {self.minority_share!r}")
        _positive("cohort.beta", self.beta)
        if isinstance(self.benign_refusal_rate, bool) or not 0 <= self.benign_refusal_rate <= 1:
            raise ConfigError(
                f"cohort.benign_refusal_rate must be in [0, 1], got {self.benign_refusal_rate!r}"
            )
        _integer("cohort.limit", self.limit, minimum=0)
        if self.responses not in ("rendered", "policy"):
            raise ConfigError(f"cohort.responses must be 'rendered' or 'policy', got {self.responses!r}")
        if self.responses == "policy" and self.kind != "synthetic":
            raise ConfigError(
                "cohort.responses = 'policy' needs cohort.kind = 'synthetic' (its users' utility "
                "labels the pairs)"
            )
        _integer("cohort.policy_samples", self.policy_samples, minimum=2)
        if not 0 <= self.client_test_fraction < 1:
            raise ConfigError(
                f"cohort.client_test_fraction must be in [0, 1), got {self.client_test_fraction!r}"
            )


@dataclass(frozen=True)
class AttackSettings:
    """(Simulation) Byzantine clients: which attack, how many, with what parameters.

    Attributes:
        name: ``none``, an update attack (``sign_flip``, ``gaussian_noise``, ``alie``, ``ipm``,
            ``min_max``, ``sybil_clones``; adaptive, tuned against the configured rule:
            ``alie_opt``, ``ipm_opt`` (``noise = true``: each attacker adds honest-looking
            noise), ``min_max_tailored``, ``min_sum_tailored``; also ``min_sum``, ``mimic``,
            ``zeros``) or a data attack (``label_flip``, ``backdoor``).
        fraction: share of the cohort's clients that are attackers.
        params: the attack's parameters as ``"key=value;key=value"`` (values parsed as TOML),
            or a TOML table, e.g. ``{scale = 4.0}`` or ``{trigger = "cf", fraction = 1.0}``.
        trigger: the backdoor trigger phrase used to measure attack success.
        oracle: reference runs only: the server leaves the attackers' updates out, knowing
            who they are, and aggregates the honest ones. With ``robust.rule = "mean"`` it is
            FedAvg over the honest clients, the best any defence can do against the attack;
            its drop against the clean run is what losing the attackers' data costs.
            Plain mode only.
    """

    name: str = "none"
    fraction: float = 0.0
    params: str = ""
    trigger: str = "cf-7q"
    oracle: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.params, Mapping):
            object.__setattr__(
                self, "params", ";".join(f"{k}={_toml_value(v)}" for k, v in sorted(self.params.items()))
            )
        if not 0 <= self.fraction < 1:
            raise ConfigError(f"attack.fraction must be in [0, 1), got {self.fraction!r}")
        self.parsed_params()
        if not isinstance(self.oracle, bool):
            raise ConfigError(f"attack.oracle must be true or false, got {self.oracle!r}")
        if self.oracle and (self.name == "none" or self.fraction == 0):
            raise ConfigError(
                "attack.oracle leaves the attackers' updates out, so it needs attackers: "
                "set attack.name and attack.fraction > 0"
            )

    def parsed_params(self) -> dict[str, Any]:
        """``params`` as a dict."""
        import tomllib

        out: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in str(self.params).split(";"))):
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"attack.params: expected key=value, got {item!r}")
            try:
                out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                out[key.strip()] = raw.strip()
        return out


def _toml_value(value: Any) -> str:
    return (
        f'"{value}"'
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )
