"""The server's round loop over a Flower ``Grid``: sample, send, validate, aggregate, checkpoint.

It mirrors ``flwr.serverapp.strategy.Strategy.start`` (configure -> send_and_receive
-> aggregate) but owns the loop so that it can resume from a checkpoint, seed the
client sampling, apply fedrlhf's robust rules and user-level DP, and report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrlhf.aggregation import (
    AggregationError,
    InvalidUpdate,
    Reputation,
    aggregate,
    dropped_by,
    flatten,
    norm_ratio_keep,
    pre_aggregate,
    rule_kwargs,
    unflatten,
    validate_update,
)
from fedrlhf.aggregation.server_opt import DEFAULT_SERVER_LR, ServerOptimizer
from fedrlhf.aggregation.validate import REASONS, aggregate_problem
from fedrlhf.config import RunConfig
from fedrlhf.errors import ConfigError, FedRLHFError
from fedrlhf.federation.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedrlhf.federation.devices import Roster, error_reason, key_fingerprint, participation
from fedrlhf.federation.payload import (
    decode_train_reply,
    message_bytes,
    run_config_record,
    scalar_metrics,
    to_array_record,
)
from fedrlhf.federation.secure import secure_round
from fedrlhf.federation.seeds import client_seed
from fedrlhf.privacy.user_level import UserLevelAccountant, add_gaussian_noise, clip_update, update_clip_norm
from fedrlhf.training.device import worker_model

_LOG = logging.getLogger(__name__)
RoundCallback = Callable[[dict[str, Any]], None]
UpdateHook = Callable[[int, list[str], list[np.ndarray], np.random.Generator], list[np.ndarray | None]]
"""(Simulation) replace some clients' updates, e.g. Byzantine attackers: (round, devices, updates, rng)
-> the updates to aggregate, ``None`` where the hook withholds a device's update (the oracle reference)."""
EvalHook = Callable[[dict[str, np.ndarray]], dict[str, Any]]
"""(Simulation) extra metrics of a global model, e.g. backdoor attack success."""


def identify_devices(
    grid: Grid, cfg: RunConfig, *, expected: int, timeout: float, roster: Roster | None = None
) -> dict[str, int]:
    """Ask every node not yet identified for its device id; returns device id -> node id.

    Waits up to ``timeout`` s for ``expected`` nodes to be online (saying so every 30 s), then
    asks them. Each device id is bound to the node's registered key (:class:`Roster`): a
    duplicate or a key mismatch is refused. ``roster`` (kept across rounds and, through the
    checkpoint, across resumes) records what happened in ``roster.events``.
    """
    roster = roster if roster is not None else Roster()
    start = time.monotonic()
    deadline, said = start + timeout, start
    nodes = list(grid.get_node_ids())
    while len(nodes) < expected and time.monotonic() < deadline:
        if time.monotonic() - said >= 30:
            said = time.monotonic()
            _LOG.warning(
                "waiting for devices: %d of %d online (cohort.num_clients), %.0f s left",
                len(nodes),
                expected,
                deadline - said,
            )
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < expected:
        _LOG.warning(
            "starting with %d of %d devices (cohort.num_clients) after %.0f s",
            len(nodes),
            expected,
            time.monotonic() - start,
        )
    known = set(roster.nodes.values())
    asked = sorted(n for n in nodes if n not in known)
    if not asked:
        return dict(roster.nodes)
    keys = {int(n.node_id): key_fingerprint(bytes(n.public_key)) for n in _node_infos(grid)}
    record = RecordDict({"config": run_config_record(cfg, **{"clients-dir": cfg.federation.clients_dir})})
    messages = [Message(record, dst_node_id=n, message_type=MessageType.QUERY) for n in asked]
    claims, failed = {}, {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        device = None if reply.has_error() else _device_of(reply)
        if reply.has_error():
            failed[node] = error_reason(reply.error.code, reply.error.reason)
        elif device is None:
            failed[node] = "its reply named no device id"
        else:
            claims[node] = device
    failed.update({n: f"no reply within {timeout:g} s" for n in asked if n not in claims and n not in failed})
    failed.update(roster.bind(claims, keys, set(nodes)))
    for node, why in failed.items():
        _LOG.warning("node %s takes no part: %s", node, why)
    roster.events.append(
        {
            "expected": expected,
            "online": len(nodes),
            "asked": asked,
            "identified": sorted(d for n, d in claims.items() if n not in failed),
            "failed": {str(n): why for n, why in sorted(failed.items())},
        }
    )
    return dict(roster.nodes)


def _node_infos(grid: Grid) -> list[Any]:
    """The nodes' info (id, registered key) the SuperLink gives the ServerApp, if it gives any."""
    try:
        return list(grid.get_nodes())
    except (AttributeError, NotImplementedError):
        return []


def _initial_state(cfg: RunConfig, run_dir: Path | None = None) -> ServerState:
    """Round 0: a fresh model, ``federation.initial_model``, or the public warm start (trained
    here; its record opens ``history`` and its model is kept in ``run_dir/warm_start``); for
    ``dpo`` / ``kto``, a fresh policy LoRA."""
    from fedrlhf.models.reward import RewardModel
    from fedrlhf.models.state import get_trainable_state

    history: list[dict[str, Any]] = []
    if cfg.federation.task != "reward":  # dpo / kto: a fresh policy LoRA (the policy is its base)
        from fedrlhf.training.policy_task import initial_policy_state

        state = initial_policy_state(cfg.policy, seed=cfg.federation.seed)
    elif cfg.federation.initial_model:
        state = initial_model_state(cfg)
    elif cfg.warm_start.data:
        state, record = public_warm_start(cfg, run_dir)
        history.append({"round": 0, "warm_start": record})
    else:
        fresh = RewardModel.build(cfg.model, seed=cfg.federation.seed)  # LoRA B = 0; a zero head if head-only
        state = get_trainable_state(fresh)
    rng = np.random.default_rng(cfg.federation.seed)
    return ServerState(round=0, global_state=state, rng=dict(rng.bit_generator.state), history=history)


WARM_START_DIR = "warm_start"
"""Where a run directory keeps the warm-started model (loadable with ``RewardModel.from_pretrained``)."""


def public_warm_start(cfg: RunConfig, run_dir: Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Train the first global model on ``[warm_start]``'s public data (not private, by design).

    The tokens and frozen features are cached in ``$FEDRLHF_HOME/cache`` (default
    ``~/.fedrlhf``), keyed by the data, tokenizer and backbone, so another run on the same
    public data skips them. Returns (trainable state, the report's record).
    """
    import os

    from fedrlhf.training.warm_start import warm_start

    home = Path(os.environ.get("FEDRLHF_HOME", Path.home() / ".fedrlhf"))
    result = warm_start(
        cfg.warm_start, cfg.model, threads=cfg.train.threads, cache_dir=home / "cache", say=_say
    )
    if run_dir is not None:
        path = run_dir / WARM_START_DIR
        result.model.save_pretrained(path, extra_json={"warm_start.json": result.record})
        result.record["model"] = WARM_START_DIR  # in the run directory
    return result.state, result.record


def _say(line: str) -> None:
    """A progress line for the operator, on stderr (the simulate command's live bar stays below it)."""
    print(f"fedrlhf server: {line}", file=sys.stderr, flush=True)


def initial_model_state(cfg: RunConfig) -> dict[str, np.ndarray]:
    """The trainable state of the saved reward model ``federation.initial_model`` (a warm start).

    Its model settings must be the run's ``[model]`` (same backbone, LoRA layout and head), so
    that its state is exactly the payload layout the devices train.
    """
    from fedrlhf.models.reward import RewardModel
    from fedrlhf.models.state import get_trainable_state

    path = Path(cfg.federation.initial_model)
    saved = RewardModel.from_pretrained(path, personal_adapter=cfg.model.personal_adapter)
    mine = dataclasses.replace(cfg.model, max_length=saved.config.max_length)  # length: no weights
    if saved.config != mine:
        diff = {
            k: (v, getattr(cfg.model, k))
            for k, v in dataclasses.asdict(saved.config).items()
            if k != "max_length" and getattr(cfg.model, k) != v
        }
        raise ConfigError(
            f"federation.initial_model {path} was trained with other model settings "
            f"(saved vs [model]: {diff}); set [model] to match it"
        )
    return get_trainable_state(saved)


def _send_train(
    grid: Grid, cfg: RunConfig, state: ServerState, round_: int, sampled: list[str], nodes: dict[str, int]
) -> tuple[list[Message], int]:
    arrays = to_array_record(state.global_state)
    evaluate = cfg.federation.eval_every > 0 and round_ % cfg.federation.eval_every == 0
    messages = []
    for device in sampled:
        config = run_config_record(
            cfg,
            **{
                "round": round_,
                "client-seed": client_seed(cfg, round_, device),
                "clients-dir": cfg.federation.clients_dir,
                "evaluate": evaluate,
            },
        )
        messages.append(
            Message(
                RecordDict({"arrays": arrays, "config": config}),
                dst_node_id=nodes[device],
                message_type=MessageType.TRAIN,
            )
        )
    down = sum(message_bytes(m) for m in messages)
    return list(grid.send_and_receive(messages, timeout=cfg.federation.timeout)), down


_CLIP_SLACK = 1e-5  # relative: a client's clipped float32 update may round a hair above its bound


def _norm_limit(cfg: RunConfig) -> float | None:
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


def _device_of(reply: Message) -> str | None:
    """The device id a reply names, if it names one."""
    try:
        device = reply.content.config_records["config"].get("device-id")
    except (KeyError, TypeError, ValueError):
        return None
    return device if isinstance(device, str) and device else None


def _collect(
    replies: list[Message],
    layout: dict[str, tuple[int, ...]],
    cfg: RunConfig,
    nodes: Mapping[str, int] | None = None,
) -> tuple[list[str], list[np.ndarray], list[dict[str, float]], dict[str, int], list[str]]:
    """Validated update vectors, their devices and metrics; counts of failures by reason; the
    devices whose update was rejected.

    A malformed reply (a missing record, undecodable arrays, a device id that is not its
    sender's, per ``nodes``: device -> node id) is one more failure, counted as ``malformed``.
    """
    devices, updates, metrics, failures = [], [], [], {"error": 0}
    rejected: list[str] = []
    max_norm = _norm_limit(cfg)
    sender_of = {node: device for device, node in (nodes or {}).items()}
    for reply in replies:
        if reply.has_error():
            failures["error"] += 1
            continue
        sender = sender_of.get(reply.metadata.src_node_id)
        try:
            device, arrays, values = decode_train_reply(reply.content)
            if nodes is not None and device != sender:
                raise InvalidUpdate(f"reply names device {device!r}, sent by {sender!r}", reason="malformed")
            vec = validate_update(arrays, layout, max_norm=max_norm)
        except InvalidUpdate as exc:
            failures[exc.reason] = failures.get(exc.reason, 0) + 1
            _LOG.warning("update of %s rejected: %s", sender or _device_of(reply) or "a device", exc)
            rejected.extend(d for d in [sender or _device_of(reply)] if d is not None)
            continue
        devices.append(device)
        updates.append(vec)
        metrics.append(values)
    return devices, updates, metrics, failures, rejected


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


def _account_distributed_dp(cfg: RunConfig, state: ServerState, population: int) -> None:
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


def _mean_metric(metrics: list[dict[str, float]], key: str) -> float | None:
    values = [m[key] for m in metrics if key in m and math.isfinite(m[key])]
    return float(np.mean(values)) if values else None


def _apply_hook(
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
    limit = _norm_limit(cfg)
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


def _step(
    updates: list[np.ndarray],
    cfg: RunConfig,
    state: ServerState,
    devices: list[str],
    rng: np.random.Generator,
    left_out: list[int],
    failures: dict[str, int],
    layout: dict[str, tuple[int, ...]],
) -> str | None:
    """Aggregate ``updates`` and move ``state.global_state`` by it; or keep it and say why.

    Refused: a rule that cannot run on this round's inputs (e.g. krum after dropouts), an
    aggregate that is not finite or larger than its inputs allow
    (:func:`~fedrlhf.aggregation.validate.aggregate_problem`), a new global model that is not
    finite (float32 overflow).
    """
    try:
        proven = proven_attackers(failures, cfg)
        agg = aggregate_updates(updates, cfg, state, devices, rng, dropped=left_out, known_bad=proven)
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


def run_round(
    grid: Grid,
    cfg: RunConfig,
    state: ServerState,
    nodes: dict[str, int],
    update_hook: UpdateHook | None = None,
) -> dict[str, Any]:
    """One federated round; mutates ``state`` (global model, RNG, accountants)."""
    start = time.perf_counter()
    round_ = state.round + 1
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng
    devices = sorted(nodes)
    state.population = len(devices)  # what user-level DP's sampling rate is computed over
    k = min(cfg.federation.clients_per_round, len(devices))
    sampled = [devices[i] for i in sorted(rng.choice(len(devices), size=k, replace=False))]
    layout = {n: tuple(v.shape) for n, v in state.global_state.items()}
    if cfg.secagg.enabled:  # the server learns group means only; the robust rule runs over them
        if update_hook is not None:
            raise ConfigError(
                "update attacks replace updates at the server, which in secure mode sees only "
                "group means; simulate a data attack (label_flip, backdoor) or turn secagg off"
            )
        sec = secure_round(grid, cfg, state.global_state, sampled, nodes, round_, rng)
        train_seconds = time.perf_counter() - start
        if cfg.secagg.dp_noise_multiplier:  # distributed DP: one sampled Gaussian step per round
            _account_distributed_dp(cfg, state, len(devices))
        ok = [f"group-{i}" for i in range(len(sec.group_means))]
        updates, metrics, failures = sec.group_means, sec.metrics, sec.failures
        up, down, clients_ok = sec.bytes_up, sec.bytes_down, sum(sec.group_sizes)
        members, rejected = sec.members, list(sec.rejected)
        errors, missing = {}, "no usable part in the secure round (see failures)"
        epsilons = dict(sec.epsilons)
    else:
        replies, down = _send_train(grid, cfg, state, round_, sampled, nodes)
        train_seconds = time.perf_counter() - start
        ok, updates, metrics, failures, rejected = _collect(replies, layout, cfg, nodes)
        epsilons = {d: float(m["epsilon"]) for d, m in zip(ok, metrics, strict=True) if _finite_eps(m)}
        errors = _error_replies(replies, nodes)
        missing = f"no reply within federation.timeout ({cfg.federation.timeout:g} s)"
        up = sum(message_bytes(r) for r in replies if not r.has_error())
        if update_hook is not None and updates:
            ok, updates = _apply_hook(update_hook, round_, ok, updates, rng, cfg, failures, rejected)
        clients_ok = len(updates)
        members = [[d] for d in ok]
    # rejected: devices whose update (secure: group mean) was refused before the rule, on proof
    # (above) or by the norm-ratio check (below)
    if cfg.robust.max_norm_ratio and updates and not cfg.user_dp.enabled:
        keep = set(norm_ratio_keep(updates, cfg.robust.max_norm_ratio).tolist())
        over = [d for i in range(len(updates)) if i not in keep for d in members[i]]
        if over:
            failures["norm_ratio"] = len(updates) - len(keep)
            clients_ok -= len(over)
            rejected += over
            kept = sorted(keep)
            ok, updates = [ok[i] for i in kept], [updates[i] for i in kept]
            members = [members[i] for i in kept]
    left_out: list[int] = []  # indices into updates that a filtering rule dropped
    aggregate_seconds = 0.0
    if not updates or clients_ok < cfg.federation.min_clients:
        need = cfg.federation.min_clients
        refused: str | None = f"{clients_ok} usable update(s), federation.min_clients = {need}"
    else:
        aggregate_start = time.perf_counter()
        refused = _step(updates, cfg, state, ok, rng, left_out, failures, layout)
        aggregate_seconds = time.perf_counter() - aggregate_start
    if refused is not None:
        _LOG.warning("round %d keeps the previous global model: %s", round_, refused)
    state.round, state.rng = round_, rng.bit_generator.state
    eps = [m["epsilon"] for m in metrics if _finite_eps(m)]
    row = {
        "round": round_,
        "clients_sampled": k,
        "clients_ok": clients_ok,
        "failures": failures,
        "refused": refused,  # why the global model did not change this round (None: it did)
        "global_accuracy": None,
        "client_global_accuracy": _mean_metric(metrics, "global_accuracy"),
        "personal_accuracy": _mean_metric(metrics, "personal_accuracy"),
        "record_epsilon_max": max(eps) if eps else None,
        # each device's own ledger total after this round, as it reported it (record level)
        "epsilon_by_device": {d: epsilons[d] for d in sorted(epsilons)},
        "user_epsilon": (
            UserLevelAccountant.from_dict(state.user_dp).epsilon(cfg.user_dp.delta) if state.user_dp else None
        ),
        "train_loss": _mean_metric(metrics, "train_loss"),
        "bytes_up": int(up),
        "bytes_down": int(down),
        # devices whose update (secure: whose group's mean) was rejected or the rule left out
        "dropped": sorted([*rejected, *(d for i in left_out for d in members[i])]),
        # participation: every device asked, those whose update was usable, the others and why
        "asked": sampled,
        "answered": sorted(d for group in members for d in group),
    }
    answered = sorted(d for group in members for d in group)
    row["failed"] = participation(sampled, answered, errors, rejected, missing)
    row["epsilon"] = row["user_epsilon"] if row["user_epsilon"] is not None else row["record_epsilon_max"]
    row["seconds"] = time.perf_counter() - start
    # where the round's time went: the clients' stage (sending, local work, replies: wall), the
    # devices' own compute (the sum of what each reported; secure mode: not reported), the rule
    row["timing"] = {
        "train_stage": train_seconds,
        "client_compute": sum(m.get("seconds", 0.0) for m in metrics) if not cfg.secagg.enabled else None,
        "aggregation": aggregate_seconds,
    }
    return row


def _finite_eps(metrics: Mapping[str, Any]) -> bool:
    """Whether a client's metrics carry a usable epsilon: a number in [0, inf) (not NaN)."""
    return 0 <= metrics.get("epsilon", -1) < math.inf


def _error_replies(replies: list[Message], nodes: Mapping[str, int]) -> dict[str, str]:
    """Device -> its error reply in plain words (e.g. its privacy policy refused the round)."""
    device_of = {node: device for device, node in nodes.items()}
    return {
        device_of[r.metadata.src_node_id]: error_reason(r.error.code, r.error.reason)
        for r in replies
        if r.has_error() and r.metadata.src_node_id in device_of
    }


def federated_evaluate(
    grid: Grid, cfg: RunConfig, state: ServerState, nodes: dict[str, int]
) -> dict[str, Any]:
    """Send the global model to (up to) clients_per_round devices for evaluation on their own data."""
    devices = sorted(nodes)
    rng = np.random.default_rng([cfg.federation.seed, state.round, 0xE7A1])
    k = min(cfg.federation.clients_per_round, len(devices))
    sampled = [devices[i] for i in sorted(rng.choice(len(devices), size=k, replace=False))]
    arrays = to_array_record(state.global_state)
    config = run_config_record(cfg, **{"clients-dir": cfg.federation.clients_dir})
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": config}),
            dst_node_id=nodes[d],
            message_type=MessageType.EVALUATE,
        )
        for d in sampled
    ]
    metrics = [
        scalar_metrics(r.content.metric_records["metrics"])
        for r in grid.send_and_receive(messages, timeout=cfg.federation.timeout)
        if not r.has_error() and "metrics" in r.content.metric_records
    ]
    return {
        "clients": len(metrics),
        "global_accuracy": _mean_metric(metrics, "global_accuracy"),
        "personal_accuracy": _mean_metric(metrics, "personal_accuracy"),
    }


def server_evaluate(cfg: RunConfig, global_state: dict[str, np.ndarray]) -> float | None:
    """Accuracy of the global model on the operator's held-out set, if it has one (a policy's:
    implicit-reward accuracy, how often beta * log(pi / pi_ref) ranks the chosen answer first)."""
    if not cfg.federation.test_data:
        return None
    if cfg.federation.task != "reward":
        from fedrlhf.training.policy_task import heldout_accuracy

        return heldout_accuracy(cfg.policy, global_state, Path(cfg.federation.test_data))
    from fedrlhf.feedback import read_feedback
    from fedrlhf.models.state import set_trainable_state
    from fedrlhf.training.data import encode_cached
    from fedrlhf.training.evaluate import evaluate

    model, _ = worker_model(cfg.model)
    set_trainable_state(model, global_state)
    model.use_personal(False)
    path = Path(cfg.federation.test_data)
    data = encode_cached(
        read_feedback(path).records, model.tokenizer, cfg.model.max_length, path.parent / ".fedrlhf-cache"
    )
    return evaluate(model, data).accuracy


def save_global_model(cfg: RunConfig, global_state: dict[str, np.ndarray], path: Path) -> None:
    """Write the global reward model as a directory loadable by ``RewardModel.from_pretrained``
    (dpo / kto: the policy, loadable by ``PolicyModel.from_pretrained``)."""
    from fedrlhf.models.state import set_trainable_state

    if cfg.federation.task != "reward":
        from fedrlhf.training.policy_task import save_policy

        save_policy(cfg.policy, global_state, path)
        return

    model, _ = worker_model(cfg.model)
    set_trainable_state(model, global_state)
    model.save_pretrained(path)


def run_server(
    grid: Grid,
    cfg: RunConfig,
    run_dir: Path,
    *,
    on_round: RoundCallback | None = None,
    update_hook: UpdateHook | None = None,
    eval_hook: EvalHook | None = None,
) -> ServerState:
    """Run (or resume) all rounds; checkpoint after each; return the final state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(run_dir, cfg)
    if state is None:  # a fresh run: the initial model (a warm start trains here), evaluated as round 0
        state = _initial_state(cfg, run_dir)
        zero: dict[str, Any] = state.history[0] if state.history else {"round": 0}
        started = time.perf_counter()
        zero["global_accuracy"] = server_evaluate(cfg, state.global_state)
        zero["timing"] = {"evaluation": time.perf_counter() - started}
        zero.update(eval_hook(state.global_state) if eval_hook else {})
        state.history[:1] = [zero]
        if cfg.warm_start.data:  # kept in the checkpoint: a resumed run never trains it again
            save_checkpoint(run_dir, state, cfg)
    roster = Roster.from_checkpoint(state.devices)
    wait = min(cfg.federation.timeout, 600)
    identifying = time.perf_counter()
    nodes = identify_devices(grid, cfg, expected=cfg.cohort.num_clients, timeout=wait, roster=roster)
    if state.history and state.round == 0:  # in memory (the report): how long asking every node took
        state.history[0].setdefault("timing", {})["identification"] = time.perf_counter() - identifying
    if not nodes:
        raise FedRLHFError(f"no device took part: {roster.events[-1] if roster.events else 'no node online'}")
    reported = 0
    for _ in range(state.round, cfg.federation.rounds):
        # a node that joined (or came back) since is identified before the round
        begin = time.perf_counter()
        nodes = identify_devices(grid, cfg, expected=0, timeout=min(wait, 120), roster=roster)
        identified = time.perf_counter()
        row = run_round(grid, cfg, state, nodes, update_hook)
        row["identification"], reported = roster.events[reported:], len(roster.events)
        state.devices = roster.to_checkpoint()
        evaluated = time.perf_counter()
        row["global_accuracy"] = server_evaluate(cfg, state.global_state)
        if eval_hook is not None:
            row.update(eval_hook(state.global_state))
        timing = row.setdefault("timing", {})
        timing.update(identification=identified - begin, evaluation=time.perf_counter() - evaluated)
        state.history.append(row)
        saved = time.perf_counter()
        if cfg.federation.save_every_round:
            save_global_model(cfg, state.global_state, run_dir / "models" / f"round-{state.round:03d}")
        save_checkpoint(run_dir, state, cfg)
        # after the write, so in memory (the report) only: a resumed run's earlier rows lack them
        timing.update(checkpoint=time.perf_counter() - saved, total=time.perf_counter() - begin)
        if on_round is not None:
            on_round(row)
    state.final_eval = federated_evaluate(grid, cfg, state, nodes)
    save_global_model(cfg, state.global_state, run_dir / "model")
    return state


def replace_config(cfg: RunConfig, **federation: Any) -> RunConfig:
    """``cfg`` with some federation fields replaced."""
    return dataclasses.replace(cfg, federation=dataclasses.replace(cfg.federation, **federation))
