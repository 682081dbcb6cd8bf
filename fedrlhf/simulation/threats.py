"""Byzantine clients in simulations: who attacks, poisoned data, replaced updates, attack success.

- Data attacks (``label_flip``, ``backdoor``) poison the attackers' ``train.jsonl``
  when the cohort is materialised; those clients then train honestly on bad data.
- Update attacks (``sign_flip``, ``alie``, ``ipm``, ``min_max``, ...), plain mode:
  the attackers' updates are replaced at the server before validation and
  aggregation (:data:`fedrlhf.federation.server.UpdateHook`), modelling omniscient
  colluding attackers that know the honest updates of the round (the strongest
  threat model, as in ByzFL's benchmarks).
- Adaptive attacks (``alie_opt``, ``ipm_opt``, ``min_max_tailored``, ...,
  :mod:`fedrlhf.simulation.adaptive`) are white-box: they tune against the server's
  checks, pre-aggregation and rule with its parameters (:func:`server_view`; plain mode)
  or against the same over secure group means built from the coalition's own honest
  updates (:func:`secure_view`). They do not know the server's random draws (DnC's
  coordinates, buckets, groups) nor, for centered clipping, its centre.
- Update attacks, secure mode: the server never sees an update, so nothing can be
  replaced there and nobody, attackers included, can see the honest clients'
  updates. Each attacking device forges its own update before masking
  (:func:`forged_update`, which the simulation's ClientApp runs inside SecAgg+:
  :func:`fedrlhf.simulation.client_app.coalition_forgery`). The attackers form a
  *coalition* (one adversary running several devices, as in ALIE's non-omniscient
  setting): each knows the honest update every member would send this round, and the
  attack's statistics (mean, std, distances) come from those. Forged updates skip the clipping honest clients
  apply; the server's bound on each group mean is what limits them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from fedrlhf.aggregation.base import AggregationError
from fedrlhf.config import RunConfig
from fedrlhf.feedback import Preference, read_feedback, write_jsonl
from fedrlhf.io import atomic_write_bytes, atomic_write_json
from fedrlhf.simulation.adaptive import Aggregator
from fedrlhf.simulation.attacks import (
    AttackConfig,
    backdoor_eval_pairs,
    backdoor_success_rate,
    malicious_updates,
    poison_preferences,
)
from fedrlhf.simulation.cohorts import user_id
from fedrlhf.training.device import DeviceDir, RoundSpec, client_round


def attack_config(cfg: RunConfig) -> AttackConfig | None:
    """The attack of a run, or None."""
    a = cfg.attack
    if a.name == "none" or a.fraction == 0:
        return None
    params = a.parsed_params()
    if a.name == "backdoor":
        params.setdefault("trigger", a.trigger)
    if a.name in ("backdoor", "label_flip"):
        params.setdefault("fraction", 1.0)  # share of each attacker's own pairs that is poisoned
    return AttackConfig(a.name, a.fraction, params)


def attackers(cfg: RunConfig) -> set[str]:
    """Device ids of the attackers: a seeded ``fraction`` of the cohort."""
    n = cfg.cohort.num_clients
    k = int(round(cfg.attack.fraction * n)) if attack_config(cfg) else 0
    order = np.random.default_rng([cfg.federation.seed, 0xA77AC4]).permutation(n)
    return {user_id(int(i)) for i in order[:k]}


def poison_cohort(cfg: RunConfig, clients_dir: Path) -> set[str]:
    """Poison the attackers' training data (data attacks); idempotent; returns attacker ids."""
    attack, bad = attack_config(cfg), attackers(cfg)
    for device in sorted(bad):
        meta_path = clients_dir / device / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        mark = {"name": cfg.attack.name, "params": cfg.attack.params}
        if meta.get("attack") == mark:
            continue  # already poisoned (a resumed run)
        if attack is not None and attack.kind == "update":
            meta["coalition"] = sorted(bad)  # secure mode: the members forge together
        if attack is not None and attack.kind == "data":
            train = clients_dir / device / "train.jsonl"
            rng = np.random.default_rng([cfg.federation.seed, int(device.split("-")[-1])])
            # cohorts hold preference pairs (synthetic, or cohort.data: a preference file)
            prefs = cast(list[Preference], read_feedback(train).records)
            write_jsonl(train, poison_preferences(attack, prefs, rng=rng))
        meta["attack"] = mark
        atomic_write_json(meta_path, meta)
    return bad


def update_hook(cfg: RunConfig, bad: set[str]) -> Callable[..., list[np.ndarray | None]] | None:
    """The server hook replacing attackers' updates (update attacks, plain mode only).

    With ``attack.oracle`` it withholds them instead, whatever the attack (the reference run).

    In secure mode the attackers forge their updates on their devices instead
    (:func:`forged_update`), so there is no server hook.
    """
    attack = attack_config(cfg)
    if cfg.attack.oracle:
        return _oracle_hook(bad)
    if attack is None or attack.kind != "update" or cfg.secagg.enabled:
        return None

    def hook(
        round_: int, devices: list[str], updates: list[np.ndarray], rng: np.random.Generator
    ) -> list[np.ndarray | None]:
        mal = [i for i, d in enumerate(devices) if d in bad]
        if not mal:
            return cast(list[np.ndarray | None], updates)  # list is invariant; this hook withholds none
        honest = [updates[i] for i in mal] + [u for i, u in enumerate(updates) if i not in set(mal)]
        # ``honest`` already holds the attackers' own would-be updates: n = len(updates), not n + m
        # the white-box view sees the round's honest updates and the attackers' replacements
        view = server_view(cfg, np.random.default_rng([cfg.federation.seed, round_, 0xB0C5]))
        visible = [u for i, u in enumerate(updates) if i not in set(mal)]
        fake = malicious_updates(
            _with_clients(attack, len(updates)),
            honest,
            num_malicious=len(mal),
            rng=rng,
            aggregator=_replacing(view, visible, len(honest)),
        )
        out: list[np.ndarray | None] = list(updates)
        for i, vec in zip(mal, fake, strict=False):
            out[i] = np.asarray(vec, dtype=np.float32)
        return out

    return hook


def server_view(cfg: RunConfig, rng: np.random.Generator) -> Callable[..., np.ndarray]:
    """What the server does with a round's update vectors, as a white-box attacker runs it.

    Its norm checks (``robust.client_clip_norm`` / ``max_update_norm``, ``max_norm_ratio``),
    then :func:`fedrlhf.federation.aggregate.aggregate_updates` (pre-aggregation, rule and its
    parameters from ``[robust]``; proven attackers count against ``num_malicious``, as
    ``known_bad``) with no history: no reputation, no centre, ``robust.drop_dissenters`` on this
    round's agreement alone (:func:`fedrlhf.federation.aggregate.dissenters`). Random draws
    come from ``rng``, not the server's (the attacker cannot know them).
    """
    from fedrlhf.aggregation import norm_ratio_keep
    from fedrlhf.federation.aggregate import aggregate_updates, dissenters
    from fedrlhf.federation.checkpoint import ServerState

    model = dataclasses.replace(cfg, robust=dataclasses.replace(cfg.robust, reputation=False))
    r = cfg.robust
    limit = r.client_clip_norm * (1 + 1e-6) if r.client_clip_norm else r.max_update_norm
    seed = int(rng.integers(2**63))  # the same draws at every call: a deterministic objective

    def aggregator(inputs: list[np.ndarray], known_bad: int = 0) -> np.ndarray:
        x = [np.asarray(u, dtype=np.float32) for u in inputs]
        x = [u for u in x if not limit or np.linalg.norm(u.astype(np.float64)) <= limit]
        if r.client_clip_norm:  # above the clients' clip bound: proof of an attacker
            known_bad += len(inputs) - len(x)
        if r.max_norm_ratio and x and not cfg.user_dp.enabled:
            x = [x[i] for i in norm_ratio_keep(x, r.max_norm_ratio)]
        if not x:
            raise AggregationError("server view: every input was rejected")
        state = ServerState(round=0, global_state={}, rng={})
        devices = [f"view-{i}" for i in range(len(x))]
        draws = np.random.default_rng(seed)
        if r.drop_dissenters:
            out = set(dissenters(x, model, state, devices, draws, [], known_bad))
            kept = [i for i in range(len(x)) if i not in out]
            x, devices = [x[i] for i in kept], [devices[i] for i in kept]
            known_bad += len(out)
        return aggregate_updates(x, model, state, devices, draws, known_bad=known_bad)

    return aggregator


def secure_view(cfg: RunConfig, coalition: int, rng: np.random.Generator) -> Aggregator:
    """(Secure mode) the server's rule over group means, as a coalition of ``coalition`` devices
    models a round from its own honest updates: the inputs are its honest updates then its
    forged ones (``coalition`` of them, last); the honest ones are repeated to fill the round's
    other ``clients_per_round - coalition`` seats and clipped to ``secagg.clip_norm``; random
    groups (``rng``) of ``secagg.min_group_size``; group means above ``clip_norm`` are refused,
    as the server does; then :func:`server_view` over the group means.
    """
    from fedrlhf.aggregation import clip_to_norm, make_groups

    s = cfg.secagg
    n = min(cfg.federation.clients_per_round, cfg.cohort.num_clients)
    server = server_view(cfg, rng)
    groups = make_groups(
        list(range(n)), min_group_size=s.min_group_size, num_groups=s.num_groups or None, rng=rng
    )

    def aggregator(inputs: list[np.ndarray]) -> np.ndarray:
        honest, forged = inputs[: len(inputs) - coalition], inputs[len(inputs) - coalition :]
        seats = [np.asarray(honest[i % len(honest)]) for i in range(n - coalition)]
        seats = [clip_to_norm(v, max_norm=s.clip_norm) for v in seats] + [np.asarray(v) for v in forged]
        means = [np.mean([seats[i] for i in g], axis=0) for g in groups]
        ok = [m for m in means if np.linalg.norm(m) <= s.clip_norm * (1 + 1e-6)]
        return server(ok, known_bad=len(means) - len(ok))  # a refused group proves an attacker

    return aggregator


def _replacing(view: Aggregator, visible: list[np.ndarray], n_honest: int) -> Aggregator:
    """The server's view of a round where the attackers' updates are replaced: an attack passes
    ``[*honest, *malicious]`` (its ``honest`` holds the attackers' own would-be updates too);
    the server sees the other clients' updates and the malicious ones."""

    def aggregator(inputs: list[np.ndarray]) -> np.ndarray:
        return view([*visible, *inputs[n_honest:]])

    return aggregator


def _oracle_hook(bad: set[str]) -> Callable[..., list[np.ndarray | None]]:
    """The oracle reference (``attack.oracle``): the server withholds every attacker's update."""

    def hook(
        round_: int, devices: list[str], updates: list[np.ndarray], rng: np.random.Generator
    ) -> list[np.ndarray | None]:
        return [None if d in bad else u for d, u in zip(devices, updates, strict=True)]

    return hook


def _with_clients(attack: AttackConfig, n: int) -> AttackConfig:
    """ALIE's z depends on the round's client count; tell it (unless the config fixed it)."""
    if attack.name != "alie" or "num_clients" in attack.params or "z" in attack.params:
        return attack
    return dataclasses.replace(attack, params={**attack.params, "num_clients": n})


def eval_hook(cfg: RunConfig) -> Callable[[dict[str, np.ndarray]], dict[str, Any]] | None:
    """Backdoor attack success of a global model on triggered held-out pairs."""
    attack = attack_config(cfg)
    if attack is None or attack.name != "backdoor" or not cfg.federation.test_data:
        return None
    from fedrlhf.feedback.records import Preference
    from fedrlhf.models.state import set_trainable_state
    from fedrlhf.training.data import encode
    from fedrlhf.training.device import worker_model
    from fedrlhf.training.evaluate import score_pairs

    trigger = str(attack.params.get("trigger", cfg.attack.trigger))
    pairs = [r for r in read_feedback(cfg.federation.test_data).records if isinstance(r, Preference)]
    triggered = backdoor_eval_pairs(pairs, trigger=trigger)

    def hook(global_state: dict[str, np.ndarray]) -> dict[str, Any]:
        model, _ = worker_model(cfg.model)
        set_trainable_state(model, global_state)
        model.use_personal(False)
        margins = score_pairs(model, encode(triggered, model.tokenizer, cfg.model.max_length))
        return {"attack_success_rate": backdoor_success_rate(margins)}

    return hook


# ---------------------------------------------------------------- secure mode: forged on the device


def forged_update(
    device: DeviceDir, global_state: dict[str, np.ndarray], names: list[str], cfg: RunConfig, round_: int
) -> tuple[np.ndarray, dict[str, float]]:
    """(Secure mode) what a colluding attacker sends instead of its update: a flat vector in
    ``names`` order, unclipped, and the metrics of its own honest training.

    The coalition's honest updates (own first) feed the attack: a member's honest update
    is trained from ``global_state`` on that member's data with a seed fixed by the run's
    seed, the round and the member, and cached in the clients directory, so every member
    computes the same statistics whichever trains first, and each is trained once.
    """
    attack = attack_config(cfg)
    if attack is None or attack.kind != "update":
        raise ValueError(
            f"{device.root.name} is marked as a coalition member but the run has no update attack"
        )
    members = [m for m in device.meta()["coalition"] if m != device.root.name]
    own, metrics = _coalition_update(device, global_state, names, cfg, round_)
    honest = [own] + [
        _coalition_update(DeviceDir(device.root.parent / m), global_state, names, cfg, round_)[0]
        for m in members
    ]
    rng = np.random.default_rng([cfg.federation.seed, round_, _device_number(device), 0xF0E])
    n = min(cfg.federation.clients_per_round, cfg.cohort.num_clients)
    attack = _with_clients(attack, n)
    # white-box: every member models the round alike (same seed), so they forge alike
    view = secure_view(cfg, len(honest), np.random.default_rng([cfg.federation.seed, round_, 0xB0C5]))
    forged = malicious_updates(attack, honest, num_malicious=len(honest), rng=rng, aggregator=view)[0]
    return np.asarray(forged, dtype=np.float32), metrics


def _device_number(device: DeviceDir) -> int:
    return int(hashlib.sha256(device.root.name.encode()).hexdigest()[:8], 16)


def _coalition_update(
    device: DeviceDir, global_state: dict[str, np.ndarray], names: list[str], cfg: RunConfig, round_: int
) -> tuple[np.ndarray, dict[str, float]]:
    """One member's honest update this round (flat, ``names`` order), trained once and cached."""
    path = device.root.parent / ".coalition" / f"round-{round_:05d}" / f"{device.root.name}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["update"], {k: float(z[k]) for k in z.files if k != "update"}
    spec = RoundSpec(
        round=round_,
        seed=int(
            np.random.default_rng([cfg.federation.seed, round_, _device_number(device)]).integers(2**31)
        ),
        local_epochs=cfg.federation.local_epochs,
        evaluate=False,
    )
    # the adversary does not protect its own devices' data: no DP, nothing accounted
    delta, metrics = client_round(
        device,
        global_state,
        spec,
        model_cfg=cfg.model,
        train_cfg=cfg.train,
        privacy=dataclasses.replace(cfg.privacy, enabled=False),
    )
    flat = np.concatenate([np.ravel(delta[n]) for n in names]).astype(np.float32)
    buf = io.BytesIO()
    # typed Any: numpy's stub would match ``**`` against savez's ``allow_pickle: bool`` too
    scalars: dict[str, Any] = {k: np.float64(v) for k, v in metrics.items()}
    np.savez(buf, update=flat, **scalars)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return flat, metrics
