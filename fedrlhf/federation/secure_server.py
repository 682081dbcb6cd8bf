"""Server side of a secure round: random groups, SecAgg+ per group (concurrently), checks of group means.

See :mod:`fedrlhf.federation.secure` for the protocol; the masked metrics' encoding lives here too,
next to the check that sizes them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeGuard, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from fedrlhf.aggregation import GroupingError, make_groups
from fedrlhf.config import RunConfig, SecAggConfig
from fedrlhf.federation.payload import message_bytes
from fedrlhf.federation.secure_protocol import (
    PARAM_NAMES_KEY,
    SURVIVORS_KEY,
    SecureRoundResult,
    noise_parameters,
)
from fedrlhf.federation.seeds import client_seed
from fedrlhf.privacy.distributed import noise_norm_bound

_LOG = logging.getLogger(__name__)

on_aggregate_input: Callable[[list[np.ndarray]], None] | None = None
"""Test hook: called by :func:`secure_round` with exactly the vectors the robust rule will receive."""
on_server_receive: Callable[[list[Message]], None] | None = None
"""Test hook: called with every batch of replies the server receives during the secure protocol."""

_METRIC_CAPS = {"train_loss": 20.0, "global_accuracy": 1.0, "personal_accuracy": 1.0}
"""Metrics sent masked (the server learns group means), each scaled by its cap into [0, 1]."""


# ----------------------------------------------------------------------------- server side


@dataclasses.dataclass
class _GroupOutcome:
    """What ``aggregate_fit`` saw for one group."""

    arrays: list[np.ndarray]
    weights: dict[int, int]
    plain_metrics: list[dict[str, Scalar]]


class _GroupStrategy(LegacyStrategy):
    """Legacy strategy for one group at a time: its nodes in, its unmasked mean recorded."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.configs: dict[int, dict[str, Scalar]] = {}
        self.outcome: _GroupOutcome | None = None

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[ClientProxy, FitIns]]:
        run_id = self.grid.run.run_id
        return [
            (GridClientProxy(nid, self.grid, run_id), FitIns(parameters, config))
            for nid, config in self.configs.items()
        ]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[Any, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # Every FitRes carries the same unmasked mean; returning None keeps the workflow from
        # writing it into the context as the next group's "global" model.
        if results:
            self.outcome = _GroupOutcome(
                arrays=parameters_to_ndarrays(results[0][1].parameters),
                weights={proxy.node_id: res.num_examples for proxy, res in results},
                plain_metrics=[dict(res.metrics) for _, res in results],
            )
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list, failures: list
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class _TapGrid:
    """A Grid shared by the groups' threads: one call into the Grid at a time; counts bytes.

    ``send_and_receive`` pushes, then polls (backing off from 50 ms to 1 s) with the
    lock released in between, so the groups' protocols overlap. It shows every batch of
    replies to :data:`on_server_receive`.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self._lock = threading.Lock()
        self.up = 0
        self.down = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        size = sum(message_bytes(m) for m in messages)
        with self._lock:
            self.down += size
            pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = 0.05
        while pending:
            with self._lock:
                got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(wait)
            wait = min(1.0, wait * 1.5)
        size = sum(message_bytes(r) for r in replies if not r.has_error())
        with self._lock:
            self.up += size
            if on_server_receive is not None:
                on_server_receive(replies)
        return replies


def _workflow(s: SecAggConfig, size: int, timeout: float) -> SecAggPlusWorkflow:
    """The SecAgg+ workflow for a group of ``size`` clients (weights fixed to 1)."""
    shares, threshold = s.shares_for(size), s.threshold_for(size)
    if shares <= 2:  # a group of two: Flower takes this only as "all of the group" (1.0)
        shares_arg: int | float = 1.0
    else:
        shares_arg = shares
    return SecAggPlusWorkflow(
        num_shares=shares_arg,
        reconstruction_threshold=threshold,
        max_weight=1.0,
        clipping_range=s.range,
        quantization_range=s.quantization_range,
        timeout=timeout,
    )


def _fit_config(
    cfg: RunConfig, round_: int, device: str, names: list[str], survivors: int = 1
) -> dict[str, Scalar]:
    """What a client needs for its round, as a legacy FitIns config (as ``_send_train`` sends it).

    ``survivors``: the fewest members whose updates a released sum of this group holds (its
    reconstruction threshold); with distributed DP each device's noise share follows from it.
    """
    evaluate = cfg.federation.eval_every > 0 and round_ % cfg.federation.eval_every == 0
    return {
        **cfg.to_flat(),
        "round": round_,
        "client-seed": client_seed(cfg, round_, device),
        "clients-dir": cfg.federation.clients_dir,
        "evaluate": evaluate,
        PARAM_NAMES_KEY: ",".join(names),
        SURVIVORS_KEY: survivors,
    }


def _run_group(
    tap: _TapGrid, cfg: RunConfig, params: ArrayRecord, configs: dict[int, dict[str, Scalar]], round_: int
) -> tuple[_GroupOutcome | str | None, float]:
    """SecAgg+ over one group (its own strategy and context) and its seconds.

    The outcome is None if the protocol halted (too many dropouts), an error string if
    it raised (e.g. on a member's malformed masked vector or shares: that fails this group
    only), else what ``aggregate_fit`` saw.
    """
    start = time.perf_counter()
    strategy = _GroupStrategy(tap)
    strategy.configs = configs
    base = Context(run_id=tap.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    lctx = LegacyContext(base, config=ServerConfig(num_rounds=max(round_, 1)), strategy=strategy)
    lctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: round_, Key.START_TIME: time.time()}
    )
    lctx.state.array_records[MAIN_PARAMS_RECORD] = params  # every group starts from the global model
    try:
        workflow = _workflow(cfg.secagg, len(configs), cfg.secagg.timeout or cfg.federation.timeout)
        workflow(cast(Grid, tap), lctx)  # _TapGrid wraps the Grid: same methods, calls serialized
    except Exception as exc:  # noqa: BLE001 - one group's bad input must not end the round
        return f"{type(exc).__name__}: {exc}", time.perf_counter() - start
    return strategy.outcome, time.perf_counter() - start


def secure_round(
    grid: Grid,
    cfg: RunConfig,
    global_state: Mapping[str, np.ndarray],
    sampled_devices: list[str],
    nodes: Mapping[str, int],
    round_: int,
    rng: np.random.Generator,
) -> SecureRoundResult:
    """One round of grouped SecAgg+: returns only group means (see :class:`SecureRoundResult`).

    ``global_state``'s order is the layout order of the returned vectors; ``nodes``
    maps device ids to Flower node ids; ``rng`` draws the groups. The groups run
    concurrently, one thread each, so a round takes about as long as its slowest group.
    """
    s, result = cfg.secagg, SecureRoundResult()
    try:
        groups = make_groups(
            sampled_devices, min_group_size=s.min_group_size, num_groups=s.num_groups or None, rng=rng
        )
    except GroupingError as exc:
        _LOG.warning("secure round %d skipped: %s", round_, exc)
        result.count("grouping", len(sampled_devices))
        groups = []
    names = list(global_state)
    params = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.asarray(global_state[n], dtype=np.float32) for n in names]),
        keep_input=True,
    )
    tap = _TapGrid(grid)
    with ThreadPoolExecutor(max_workers=max(1, len(groups)), thread_name_prefix="secagg") as pool:
        futures = [
            pool.submit(
                _run_group,
                tap,
                cfg,
                params,
                {
                    nodes[d]: _fit_config(cfg, round_, d, names, s.threshold_for(len(members)))
                    for d in members
                },
                round_,
            )
            for members in groups
        ]
        outcomes = [f.result() for f in futures]
    for index, (members, (outcome, seconds)) in enumerate(zip(groups, outcomes, strict=True)):
        _record_group(result, outcome, members, nodes, cfg, global_state, index, seconds)
    result.bytes_up, result.bytes_down = tap.up, tap.down
    if on_aggregate_input is not None:
        on_aggregate_input(list(result.group_means))
    return result


def _record_group(
    result: SecureRoundResult,
    outcome: _GroupOutcome | str | None,
    members: list[str],
    nodes: Mapping[str, int],
    cfg: RunConfig,
    global_state: Mapping[str, np.ndarray],
    index: int,
    seconds: float,
) -> None:
    """Check one group's outcome and add its mean (or its failure) to ``result``."""
    if not isinstance(outcome, _GroupOutcome):
        why = outcome or "too many members dropped out"
        _LOG.warning("secure aggregation of group %d (%d clients) failed: %s", index, len(members), why)
        result.count("group_halted" if outcome is None else "group_error")
        result.count("lost_clients", len(members))
        return
    device_of = {nodes[d]: d for d in members}
    contributors = [device_of[nid] for nid in outcome.weights]
    result.count("error", len(members) - len(contributors))
    wrong = [device_of[nid] for nid, w in outcome.weights.items() if w != 1]
    if wrong:
        _LOG.warning("group %d discarded: %s reported weights other than 1", index, wrong)
        result.flagged.extend(wrong)
        result.count("weight", len(wrong))
        result.count("group_rejected")
        result.rejected.extend(contributors)
        return
    size = sum(int(np.size(v)) for v in global_state.values())
    vector = _checked_mean(
        outcome.arrays, cfg.secagg, size, len(contributors), len(members), noise_parameters(cfg)
    )
    if vector is None:
        _LOG.warning("group %d discarded: its mean is not a clipped update", index)
        result.count("group_rejected")
        result.rejected.extend(contributors)
        return
    metrics = decode_metrics(outcome.arrays[1], cfg.secagg.range, len(contributors))
    reported = {
        device: float(e)
        for device, m in zip(contributors, outcome.plain_metrics, strict=True)
        if _is_epsilon(e := m.get("epsilon"))
    }
    if reported:
        metrics["epsilon"] = max(reported.values())
    result.epsilons.update(reported)
    metrics.update(group=float(index), clients=float(len(contributors)), seconds=seconds)
    result.group_means.append(vector)
    result.group_sizes.append(len(contributors))
    result.members.append(contributors)
    result.metrics.append(metrics)


def _is_epsilon(value: object) -> TypeGuard[float]:
    """A plaintext epsilon a client can have reported: a finite number >= 0 (not NaN, not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf


def _checked_mean(
    arrays: list[np.ndarray],
    s: SecAggConfig,
    size: int,
    contributors: int = 1,
    group_size: int = 1,
    noise: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray | None:
    """The group mean update if it can be one: right shape, finite, norm <= clip_norm + quantization
    error (+ the bound of its members' noise shares, with distributed DP: ``noise`` is
    :func:`noise_parameters`)."""
    if len(arrays) != 2 or np.size(arrays[0]) != size or np.size(arrays[1]) != 2 * len(_METRIC_CAPS):
        return None
    vector = np.ravel(arrays[0]).astype(np.float32)
    if not np.all(np.isfinite(vector)):
        return None
    slack = math.sqrt(size) * 2 * s.range / s.quantization_range
    z, clip = noise
    if z:
        slack += noise_norm_bound(
            noise_multiplier=z,
            clip_norm=clip,
            survivors=s.threshold_for(group_size),
            size=size,
            members=contributors,
        )
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    return vector if norm <= s.clip_norm * (1 + 1e-6) + slack else None


# ----------------------------------------------------------------------------- metrics in the masked vector


def encode_metrics(metrics: Mapping[str, float], scale: float) -> np.ndarray:
    """Pairs ``(present * value / cap * scale, present * scale)`` per masked metric; within ``[0, scale]``."""
    out: list[float] = []
    for key, cap in _METRIC_CAPS.items():
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            out += [min(max(float(value) / cap, 0.0), 1.0) * scale, scale]
        else:
            out += [0.0, 0.0]
    return np.asarray(out, dtype=np.float32)


def decode_metrics(vector: np.ndarray, scale: float, clients: int) -> dict[str, float]:
    """Group means of the masked metrics (over the members that reported each) from their mean encoding."""
    v = np.ravel(np.asarray(vector, dtype=np.float64)) / scale
    out = {}
    for i, (key, cap) in enumerate(_METRIC_CAPS.items()):
        total, present = v[2 * i], v[2 * i + 1]
        if present * clients > 0.5:
            out[key] = float(min(max(total / present, 0.0), 1.0) * cap)
    return out
