"""Byzantine clients in simulations: who attacks, poisoned data, replaced updates, attack success.

- Data attacks (``label_flip``, ``backdoor``) poison the attackers' ``train.jsonl``
  when the cohort is materialised; those clients then train honestly on bad data.
- Update attacks (``sign_flip``, ``alie``, ``ipm``, ``min_max``, ...), plain mode:
  the attackers' updates are replaced at the server before validation and
  aggregation (:data:`fedrlhf.federation.server.UpdateHook`), modelling omniscient
  colluding attackers that know the honest updates of the round (the strongest
  threat model, as in ByzFL's benchmarks).
- Update attacks, secure mode: the server never sees an update, so nothing can be
  replaced there and nobody, attackers included, can see the honest clients'
  updates. Each attacking device forges its own update before masking
  (:func:`forged_update`). The attackers form a *coalition* (one adversary running
  several devices, as in ALIE's non-omniscient setting): each knows the honest
  update every member would send this round, and the attack's statistics (mean,
  std, distances) come from those. Forged updates skip the clipping honest clients
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

from fedrlhf.config import RunConfig
from fedrlhf.feedback import Preference, read_feedback, write_jsonl
from fedrlhf.io import atomic_write_bytes, atomic_write_json
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
        fake = malicious_updates(_with_clients(attack, len(updates)), honest, num_malicious=len(mal), rng=rng)
        out: list[np.ndarray | None] = list(updates)
        for i, vec in zip(mal, fake, strict=False):
            out[i] = np.asarray(vec, dtype=np.float32)
        return out

    return hook


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
    forged = malicious_updates(attack, honest, num_malicious=len(honest), rng=rng)[0]
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
