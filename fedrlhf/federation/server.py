"""The server's round loop over a Flower ``Grid``: sample, send, validate, aggregate, checkpoint.

It mirrors ``flwr.serverapp.strategy.Strategy.start`` (configure -> send_and_receive
-> aggregate) but owns the loop so that it can resume from a checkpoint, seed the
client sampling, apply fedrlhf's robust rules and user-level DP, and report. The round-0 model
is :mod:`fedrlhf.federation.initial`'s, the aggregation step :mod:`fedrlhf.federation.aggregate`'s,
the evaluation and saving of the global model :mod:`fedrlhf.federation.evaluation`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrlhf.aggregation import InvalidUpdate, norm_ratio_keep, validate_update
from fedrlhf.config import RunConfig
from fedrlhf.errors import ConfigError, FedRLHFError
from fedrlhf.federation.aggregate import account_distributed_dp, apply_hook, norm_limit, step
from fedrlhf.federation.checkpoint import ServerState, load_checkpoint, save_checkpoint
from fedrlhf.federation.devices import Roster, error_reason, key_fingerprint, participation
from fedrlhf.federation.evaluation import federated_evaluate, mean_metric, save_global_model, server_evaluate
from fedrlhf.federation.initial import initial_state
from fedrlhf.federation.payload import decode_train_reply, message_bytes, run_config_record, to_array_record
from fedrlhf.federation.secure import secure_round
from fedrlhf.federation.seeds import client_seed
from fedrlhf.privacy.user_level import UserLevelAccountant

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
    max_norm = norm_limit(cfg)
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
            account_distributed_dp(cfg, state, len(devices))
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
            ok, updates = apply_hook(update_hook, round_, ok, updates, rng, cfg, failures, rejected)
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
    record: dict[str, Any] = {}  # robust.drop_dissenters: agreement scores, dissenters
    aggregate_seconds = 0.0
    if not updates or clients_ok < cfg.federation.min_clients:
        need = cfg.federation.min_clients
        refused: str | None = f"{clients_ok} usable update(s), federation.min_clients = {need}"
    else:
        aggregate_start = time.perf_counter()
        refused = step(updates, cfg, state, ok, rng, left_out, failures, layout, record, members)
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
        "client_global_accuracy": mean_metric(metrics, "global_accuracy"),
        "personal_accuracy": mean_metric(metrics, "personal_accuracy"),
        "record_epsilon_max": max(eps) if eps else None,
        # each device's own ledger total after this round, as it reported it (record level)
        "epsilon_by_device": {d: epsilons[d] for d in sorted(epsilons)},
        "user_epsilon": (
            UserLevelAccountant.from_dict(state.user_dp).epsilon(cfg.user_dp.delta) if state.user_dp else None
        ),
        "train_loss": mean_metric(metrics, "train_loss"),
        "bytes_up": int(up),
        "bytes_down": int(down),
        # devices whose update (secure: whose group's mean) was rejected or the rule left out
        "dropped": sorted([*rejected, *(d for i in left_out for d in members[i])]),
        "rejected": sorted(rejected),  # of those, refused before the rule (robust.remember_after)
        # participation: every device asked, those whose update was usable, the others and why
        "asked": sampled,
        "answered": sorted(d for group in members for d in group),
        **record,
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
        state = initial_state(cfg, run_dir)
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
