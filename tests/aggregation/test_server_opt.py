"""Server optimisers against Flower 1.41's FedAvgM / FedAdam / FedYogi over several rounds.

Each round: the clients' models are the global model plus random deltas; Flower's strategy
aggregates their weighted mean and steps; ours steps on the same weighted mean delta.
"""

from __future__ import annotations

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common import Metadata  # noqa: E402
from flwr.serverapp import strategy as newapi  # noqa: E402

from fedrlhf.aggregation.server_opt import ServerOptimizer  # noqa: E402

SIZE = 13


def _replies(models: list[np.ndarray], weights: list[int]) -> list[Message]:
    out = []
    for i, (vec, w) in enumerate(zip(models, weights, strict=True)):
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(vec.astype(np.float32))}),
                "metrics": MetricRecord({"num-examples": w}),
            }
        )
        meta = Metadata(
            run_id=1, message_id=f"m{i}", src_node_id=i + 1, dst_node_id=0, reply_to_message_id=f"q{i}",
            group_id="1", created_at=0.0, ttl=1e9, message_type="train",
        )  # fmt: skip
        out.append(Message(content, metadata=meta))
    return out


def _flower(kind: str, opt: ServerOptimizer) -> object:
    if kind == "fedavgm":
        return newapi.FedAvgM(server_learning_rate=opt.lr, server_momentum=opt.momentum)
    cls = {"fedadam": newapi.FedAdam, "fedyogi": newapi.FedYogi}[kind]
    return cls(eta=opt.lr, beta_1=opt.beta1, beta_2=opt.beta2, tau=opt.tau)


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam", "fedyogi"])
def test_matches_flower_over_rounds(kind: str) -> None:
    rng = np.random.default_rng(0)
    opt = ServerOptimizer(kind=kind, lr=0.3 if kind == "fedavgm" else 0.05, momentum=0.9, tau=1e-3)
    strategy = _flower(kind, opt)
    ours = rng.normal(size=SIZE).astype(np.float32)
    theirs = ArrayRecord({"w": Array(ours.copy())})
    state: dict[str, np.ndarray] = {}
    for round_ in range(1, 6):
        weights = [int(w) for w in rng.integers(1, 20, size=4)]
        deltas = [rng.normal(scale=0.01, size=SIZE).astype(np.float32) for _ in weights]
        # configure_train sets it: FedAvgM keeps the ArrayRecord, FedOpt a dict of ndarrays
        current = theirs if kind == "fedavgm" else {"w": theirs["w"].numpy()}
        strategy.current_arrays = current  # type: ignore[attr-defined]
        models = [theirs["w"].numpy() + d for d in deltas]
        theirs, _ = strategy.aggregate_train(round_, _replies(models, weights))  # type: ignore[attr-defined]
        mean_delta = np.average(np.stack(models), axis=0, weights=weights) - ours
        ours, state = opt.step(ours, mean_delta.astype(np.float32), state, round_)
        np.testing.assert_allclose(ours, theirs["w"].numpy(), rtol=2e-5, atol=1e-6)


def test_fedavg_is_the_plain_step_and_inputs_are_untouched() -> None:
    x, d = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    new, state = ServerOptimizer("fedavg", lr=2.0).step(x, d, {}, 1)
    np.testing.assert_array_equal(new, np.full(4, 2.0, np.float32))
    assert state == {} and x[0] == 1.0 and d[0] == 0.5


def test_momentum_accumulates() -> None:
    opt = ServerOptimizer("fedavgm", lr=1.0, momentum=0.5)
    x, state = opt.step(np.zeros(2, np.float32), np.ones(2, np.float32), {}, 1)
    x, state = opt.step(x, np.ones(2, np.float32), state, 2)
    np.testing.assert_allclose(x, [2.5, 2.5])  # 1 + (0.5 * 1 + 1)
    np.testing.assert_allclose(state["v"], [1.5, 1.5])


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="server optimizer"):
        ServerOptimizer("sgd")
