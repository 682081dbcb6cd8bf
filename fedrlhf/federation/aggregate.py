"""The aggregation step: the robust rule (or DP-FedAvg) over a round's updates, then the server optimiser.

Also what decides which updates reach the rule: the norm bound an update must keep
(:func:`norm_limit`), the simulation's update hook (:func:`apply_hook`) and how many rejected
inputs prove an attacker (:func:`proven_attackers`); and the user-level DP accounting.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrlhf.aggregation import (
    AggregationError,
    Reputation,
    aggregate,
    agreement_scores,
    dropped_by,
    flatten,
    pre_aggregate,
    rule_kwargs,
    unflatten,
)
from fedrlhf.aggregation.server_opt import DEFAULT_SERVER_LR, ServerOptimizer
from fedrlhf.aggregation.validate import REASONS, aggregate_problem
from fedrlhf.config import RunConfig
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.privacy.user_level import UserLevelAccountant, add_gaussian_noise, clip_update, update_clip_norm

if TYPE_CHECKING:
    from fedrlhf.federation.server import UpdateHook


_CLIP_SLACK = 1e-5  # relative: a client's clipped float32 update may round a hair above its bound


def norm_limit(cfg: RunConfig) -> float | None:
    """The largest update norm the server accepts (plain mode): the clients' clip bound, if they
    clip (``robust.client_clip_norm``), else the absurd-norm bound; None = no norm check."""
    if cfg.robust.client_clip_norm:
        return cfg.robust.client_clip_norm * (1 + _CLIP_SLACK)
    return cfg.robust.max_update_norm or None


def proven_attackers(failures: dict[str, int], cfg: RunConfig) -> int:
    """How many of a round's rejected inputs prove an attacker, i.e. no honest client sends them.

    Secure mode: the discarded groups (a mean no clipped updates can have, or a wrong weight).
    Plain mode: malformed replies and updates (a missing record, undecodable arrays, missing or
    extra arrays, wrong dtype or shape, non-finite values) and, when clients clip
    (``robust.client_clip_norm``), updates above the clip bound; without client clipping an
    honest update may exceed ``robust.max_update_norm``, so such a rejection proves nothing.
    Dropouts and withheld updates never count.
    """
    if cfg.secagg.enabled:
        return failures.get("group_rejected", 0)
    reasons = [r for r in (*REASONS, "malformed") if r != "norm" or cfg.robust.client_clip_norm]
    return sum(failures.get(r, 0) for r in reasons)


def _dp_fedavg(
    updates: list[np.ndarray], cfg: RunConfig, state: ServerState, rng: np.random.Generator
) -> np.ndarray:
    """DP-FedAvg: clip each update, noise the mean; adaptive clipping updates the bound for next round."""
    dp = cfg.user_dp
    acct = UserLevelAccountant.from_dict(state.user_dp) if state.user_dp else UserLevelAccountant()
    clip = float((state.user_dp or {}).get("clip_norm", dp.clip_norm))
    clipped, was = zip(*(clip_update(u, clip) for u in updates), strict=True)
    z, noise_z = dp.noise_multiplier, dp.noise_multiplier
    if dp.adaptive:  # Andrew et al. 2021: split z between the update and the noised unclipped count
        sb = cfg.count_noise()
        noise_z = (z**-2 - (2 * sb) ** -2) ** -0.5
        unclipped = (len(updates) - sum(was) + rng.normal(0.0, sb)) / cfg.federation.clients_per_round
        new_clip = update_clip_norm(
            clip, 1.0 - unclipped, target_quantile=dp.target_quantile, learning_rate=dp.clip_lr
        )
    acct.step(noise_multiplier=z, sample_rate=user_sampling_rate(cfg, state.population))
    result = add_gaussian_noise(
        np.sum(clipped, axis=0),
        noise_multiplier=noise_z,
        clip_norm=clip,
        num_clients_expected=cfg.federation.clients_per_round,
        rng=rng,
    )
    state.user_dp = {**acct.to_dict(), "clip_norm": new_clip if dp.adaptive else clip}
    return result


def user_sampling_rate(cfg: RunConfig, population: int = 0) -> float:
    """The rate at which a user is sampled in a round, for user-level accounting: clients per round
    over the smaller of the configured cohort and the devices actually known (``population``,
    0 = unknown). Counting fewer devices can only overstate epsilon, never understate it."""
    known = min(cfg.cohort.num_clients, population) if population else cfg.cohort.num_clients
    return min(1.0, cfg.federation.clients_per_round / max(known, 1))


def account_distributed_dp(cfg: RunConfig, state: ServerState, population: int) -> None:
    """Account one round of distributed DP: noise multiplier z on every group sum, each user in
    one group (:mod:`fedrlhf.privacy.distributed`), users sampled at :func:`user_sampling_rate`."""
    acct = UserLevelAccountant.from_dict(state.user_dp) if state.user_dp else UserLevelAccountant()
    rate = user_sampling_rate(cfg, population)
    acct.step(noise_multiplier=cfg.secagg.dp_noise_multiplier, sample_rate=rate)
    state.user_dp = {**acct.to_dict(), "mechanism": "distributed (device noise shares over secure groups)"}


def aggregate_updates(
    updates: list[np.ndarray],
    cfg: RunConfig,
    state: ServerState,
    devices: list[str],
    rng: np.random.Generator,
    dropped: list[int] | None = None,
    known_bad: int = 0,
) -> np.ndarray:
    """Robust rule (or DP-FedAvg) over validated update vectors; updates reputation.

    ``robust.pre_aggregation`` (NNM, bucketing) runs first; the rule aggregates its outputs.
    A filtering rule (dnc, cosine_filter, cosine_two_sided) appends the indices of the updates it left
    out to ``dropped``, when given (not after bucketing: it drops buckets, not clients).
    ``known_bad``: inputs already discarded this round on proof of an attacker (a secure
    group whose mean no clipped updates can have); they count against
    ``robust.num_malicious``, so the rule assumes at most ``f - known_bad`` among ``updates``
    and does not throw out honest inputs in their place.
    """
    if cfg.user_dp.enabled:
        return _dp_fedavg(updates, cfg, state, rng)
    weights = None
    if cfg.robust.reputation:
        rep = Reputation.from_dict(state.reputation) if state.reputation else Reputation()
        weights = rep.weights(devices)
    robust = cfg.robust
    if known_bad:
        robust = dataclasses.replace(robust, num_malicious=max(0, robust.num_malicious - known_bad))
    inputs, in_weights = pre_aggregate(
        robust.pre_aggregation,
        updates,
        weights,
        num_malicious=robust.num_malicious,
        bucket_size=robust.bucket_size,
        rng=rng,
    )
    params = rule_kwargs(cfg.robust.rule, robust, len(inputs), rng, center=state.robust_center)
    result = aggregate(cfg.robust.rule, inputs, in_weights, **params)
    if dropped is not None and robust.pre_aggregation != "bucketing":  # NNM: input i is client i's
        dropped.extend(dropped_by(cfg.robust.rule, inputs, **params) or [])
    if cfg.robust.reputation and np.all(np.isfinite(result)):  # a non-finite result is refused
        rep.update(devices, updates, result)
        state.reputation = rep.to_dict()
    return result


def apply_hook(
    hook: UpdateHook,
    round_: int,
    devices: list[str],
    updates: list[np.ndarray],
    rng: np.random.Generator,
    cfg: RunConfig,
    failures: dict[str, int],
    rejected: list[str],
) -> tuple[list[str], list[np.ndarray]]:
    """Run the update hook, then the same checks as for any incoming update (rejections go to
    ``failures`` and ``rejected``)."""
    replaced = hook(round_, devices, updates, rng)
    keep_devices, keep = [], []
    limit = norm_limit(cfg)
    for device, vec in zip(devices, replaced, strict=False):
        if vec is None:  # the hook withheld it (the simulation's oracle reference)
            failures["withheld"] = failures.get("withheld", 0) + 1
            continue
        with np.errstate(over="ignore"):  # a float64 value beyond float32 becomes inf: rejected
            vec32 = np.asarray(vec).astype(np.float32)
        norm = float(np.linalg.norm(vec32.astype(np.float64)))
        reason = "non_finite" if not np.isfinite(norm) else "norm" if limit and norm > limit else None
        if reason is None:
            keep_devices.append(device)
            keep.append(vec32)
        else:
            failures[reason] = failures.get(reason, 0) + 1
            rejected.append(device)
    return keep_devices, keep


def _members(devices: list[str], members: list[list[str]] | None) -> list[list[str]]:
    """Who sent each input: the devices of its secure group, or (plain mode) the device itself."""
    return [[str(d)] for d in devices] if members is None else [[str(d) for d in m] for m in members]


def remembered_suspects(
    history: list[dict[str, Any]],
    devices: list[str],
    limit: int,
    members: list[list[str]] | None = None,
    after: int = 1,
) -> list[int]:
    """Indices into ``devices`` of the inputs an earlier round left out (``robust.remember_drops``).

    A round's ``dropped`` (in ``history``, which the checkpoint keeps) holds the devices whose
    update was rejected on proof or that the rule left out (secure mode: every member of such a
    group); its ``dissenters`` (``robust.drop_dissenters``) are not remembered here, their scores
    are. An input is a suspect when one of its ``members`` (default: the device itself) is: group
    testing, since an attacker is in every group left out for it and an honest partner only by
    chance. At most ``limit`` are returned (the rule's f, less this round's proven attackers), in
    rank order: the inputs whose member was left out in the most rounds first, then the most
    recently. A device is remembered once ``after`` rounds have left it out
    (``robust.remember_after``); a rejection before the rule (the row's ``rejected``: on proof or
    by the norm-ratio check) counts ``after`` at once.
    """
    if limit <= 0:
        return []
    count: dict[str, int] = {}
    last: dict[str, int] = {}
    for row in history:
        dissent = set(row.get("dissenters") or [])  # robust.drop_dissenters re-ranks them each round
        proven = {str(d) for d in row.get("rejected") or []}
        for d in (str(d) for d in row.get("dropped") or [] if d not in dissent):
            count[d] = count.get(d, 0) + (after if d in proven else 1)
            last[d] = int(row.get("round", 0))
    count = {d: c for d, c in count.items() if c >= after}
    rank = {
        i: max((count[m], last[m]) for m in group if m in count)
        for i, group in enumerate(_members(devices, members))
        if any(m in count for m in group)
    }
    return sorted(rank, key=lambda i: (-rank[i][0], -rank[i][1], i))[:limit]


def flagged_with_everyone(
    updates: list[np.ndarray], cfg: RunConfig, state: ServerState, f: int, rng: np.random.Generator
) -> list[int]:
    """Indices the filtering rule leaves out when it scores every update of the round, at ``f``.

    With ``robust.remember_drops`` the remembered suspects are left out before the rule; scored
    without them, an attacker the memory missed may have no partner left to align with, and
    pass (HH backdoor, seed 1). So the rule first scores everyone, the suspects included, and
    what it flags is left out together with them, at most f in all (the flagged first: a
    remembered device may be an honest one an earlier round wrongly dropped). The rule scores
    the raw updates, before any ``robust.pre_aggregation``. Empty for the rules that drop no
    update.
    """
    if f <= 0:
        return []
    robust = dataclasses.replace(cfg.robust, num_malicious=f)
    params = rule_kwargs(cfg.robust.rule, robust, len(updates), rng, center=state.robust_center)
    try:
        return dropped_by(cfg.robust.rule, updates, **params) or []
    except AggregationError:  # too few updates for the rule at f: the rule itself says so below
        return []


def left_out_first(
    updates: list[np.ndarray],
    cfg: RunConfig,
    state: ServerState,
    devices: list[str],
    rng: np.random.Generator,
    proven: int,
    members: list[list[str]] | None = None,
) -> list[int]:
    """``robust.remember_drops``: indices (sorted) left out before the rule, counting against f.

    None unless some device here (secure mode: a member of a group here) was left out in an
    earlier round. Then those the rule flags scoring the whole round come first, the remembered
    ones next in their rank order, at most f (less this round's proven attackers) in all.
    """
    f = cfg.robust.num_malicious - proven
    suspects = remembered_suspects(state.history, devices, f, members, cfg.robust.remember_after)
    if not suspects:
        return []
    flagged = flagged_with_everyone(updates, cfg, state, f, rng)
    return sorted([*flagged, *(i for i in suspects if i not in flagged)][:f])


def mean_agreement(
    history: list[dict[str, Any]], devices: list[str], now: np.ndarray, members: list[list[str]] | None = None
) -> np.ndarray:
    """Per input: its agreement score (``now``, this round's) averaged, for each of its ``members``
    (default: the device itself), with those the earlier rounds of ``history`` recorded for that
    device (``agreement``: device -> score); a secure group takes its lowest member's average."""
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for row in history:
        for d, a in (row.get("agreement") or {}).items():
            total[str(d)] = total.get(str(d), 0.0) + float(a)
            count[str(d)] = count.get(str(d), 0) + 1
    return np.array(
        [
            min((total.get(m, 0.0) + float(a)) / (count.get(m, 0) + 1) for m in group)
            for group, a in zip(_members(devices, members), now, strict=True)
        ],
        dtype=np.float64,
    )


def dissenters(
    updates: list[np.ndarray],
    cfg: RunConfig,
    state: ServerState,
    devices: list[str],
    rng: np.random.Generator,
    out: list[int],
    proven: int,
    record: dict[str, Any] | None = None,
    members: list[list[str]] | None = None,
) -> list[int]:
    """``robust.drop_dissenters``: indices (sorted) left out before the rule, with ``out``.

    Each update's agreement (:func:`fedrlhf.aggregation.agreement_scores`: cosine to the mean of
    the round's other updates, all clipped to the median norm) is averaged with the device's
    scores of earlier rounds (``state.history``). What f leaves after this round's proven
    attackers and the devices in ``out`` (left out already) goes first to the updates the rule
    flags scoring the rest (a coalition keeps its place in f), then to the lowest averages (never
    so many that half the round or more is left out); all of them are returned, so the rule
    then runs with nothing left to drop (run again on fewer updates, a gated rule would not
    flag the same ones, and a slot would go unused). ``record`` gets this round's
    ``agreement`` (device -> score, for the history) and the ``dissenters``. In secure mode
    the inputs are group means: each member of a group is recorded with its group's score, and
    a group ranks by its lowest member's average (:func:`mean_agreement`).
    """
    now = agreement_scores(updates)
    rest = [i for i in range(len(updates)) if i not in set(out)]
    f = cfg.robust.num_malicious - proven - len(out)
    flagged = [rest[j] for j in flagged_with_everyone([updates[i] for i in rest], cfg, state, f, rng)]
    avg = mean_agreement(state.history, devices, now, members)
    room = sorted((i for i in rest if i not in set(flagged)), key=lambda i: (avg[i], i))
    # never half the round or more: a round with fewer updates than f allows keeps a majority
    cap = (len(updates) - 1) // 2 - len(out) - len(flagged)
    chosen = sorted(room[: max(0, min(f - len(flagged), cap))])
    if record is not None:
        who = _members(devices, members)
        record["agreement"] = {m: float(a) for group, a in zip(who, now, strict=True) for m in group}
        record["dissenters"] = [m for i in chosen for m in who[i]]
    return sorted([*flagged, *chosen])


def step(
    updates: list[np.ndarray],
    cfg: RunConfig,
    state: ServerState,
    devices: list[str],
    rng: np.random.Generator,
    left_out: list[int],
    failures: dict[str, int],
    layout: dict[str, tuple[int, ...]],
    record: dict[str, Any] | None = None,
    members: list[list[str]] | None = None,
) -> str | None:
    """Aggregate ``updates`` and move ``state.global_state`` by it; or keep it and say why.

    ``members``: who sent each update (secure mode: the devices of each group; default: the
    device of ``devices``), for the memory of ``robust.remember_drops`` and ``drop_dissenters``.

    ``record`` (a dict) gets what the round's history row keeps beyond the drops: with
    ``robust.drop_dissenters``, each device's ``agreement`` and the ``dissenters`` left out.

    Refused: a rule that cannot run on this round's inputs (e.g. krum after dropouts), an
    aggregate that is not finite or larger than its inputs allow
    (:func:`~fedrlhf.aggregation.validate.aggregate_problem`), a new global model that is not
    finite (float32 overflow).
    """
    try:
        proven = proven_attackers(failures, cfg)
        out = (
            left_out_first(updates, cfg, state, devices, rng, proven, members)
            if cfg.robust.remember_drops
            else []
        )
        if cfg.robust.drop_dissenters:
            out = sorted([*out, *dissenters(updates, cfg, state, devices, rng, out, proven, record, members)])
        gone = set(out)
        keep = [i for i in range(len(updates)) if i not in gone]
        inner: list[int] = []
        agg = aggregate_updates(
            [updates[i] for i in keep],
            cfg,
            state,
            [devices[i] for i in keep],
            rng,
            dropped=inner,
            known_bad=proven + len(out),
        )
        left_out.extend(sorted([*out, *(keep[j] for j in inner)]))
    except AggregationError as exc:
        failures["aggregation"] = len(updates)
        return f"aggregation failed: {exc}"
    problem = aggregate_problem(agg, updates, bounded=not cfg.user_dp.enabled)  # DP adds its own noise
    if problem is None:
        with np.errstate(over="ignore", invalid="ignore"):
            vec, opt_state = server_optimizer(cfg).step(
                flatten(state.global_state, layout), agg.astype(np.float32), state.server_opt, state.round + 1
            )
        if np.all(np.isfinite(vec)):
            state.global_state, state.server_opt = unflatten(vec, layout), opt_state
            if cfg.robust.rule == "centered_clipping":  # its centre next round
                state.robust_center = agg.astype(np.float32)
            return None
        problem = "non-finite global model"
    return problem


def server_optimizer(cfg: RunConfig) -> ServerOptimizer:
    """The configured server optimiser (``federation.server_optimizer`` and its settings)."""
    f = cfg.federation
    lr = f.server_lr if f.server_lr is not None else DEFAULT_SERVER_LR[f.server_optimizer]
    return ServerOptimizer(
        kind=f.server_optimizer,
        lr=lr,
        momentum=f.server_momentum,
        beta1=f.server_beta1,
        beta2=f.server_beta2,
        tau=f.server_tau,
    )
