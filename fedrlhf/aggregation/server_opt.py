"""Server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization") over flat vectors.

The round's aggregate (whatever the robust rule or the DP step returned) is a
*pseudo-gradient* pointing from the global model towards the clients' models; a
server optimiser turns it into the step the global model takes:

- ``fedavg``:  x <- x + lr * delta
- ``fedavgm``: v <- momentum * v + delta (v = delta in the first round); x <- x + lr * v
- ``fedadam``: m <- b1 m + (1 - b1) delta; v <- b2 v + (1 - b2) delta^2;
  x <- x + lr * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + tau)
- ``fedyogi``: m as Adam; v <- v - (1 - b2) delta^2 sign(v - delta^2); x <- x + lr * m / (sqrt(v) + tau)

The formulas are those of Flower's ``flwr.serverapp.strategy`` FedAvgM / FedAdam / FedYogi
(tested equal on the same inputs), written over numpy vectors so that they compose with
fedrlhf's own round loop (robust rules, secure groups, checkpoints). The optimiser state
(``m``, ``v``) is a dict of float32 arrays that the server checkpoints with the model, so a
resumed run takes bit-identical steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")

DEFAULT_SERVER_LR = {"fedavg": 1.0, "fedavgm": 1.0, "fedadam": 0.01, "fedyogi": 0.01}
"""Server learning rate when the config leaves it unset: FedAvg's 1.0 takes the mean step; the
adaptive optimisers move every coordinate by about lr per round, so they need a small one."""


@dataclass(frozen=True)
class ServerOptimizer:
    """One of :data:`SERVER_OPTIMIZERS` with its hyper-parameters (Flower's names in brackets).

    Attributes:
        kind: ``fedavg``, ``fedavgm``, ``fedadam`` or ``fedyogi``.
        lr: server learning rate (``server_learning_rate`` / ``eta``).
        momentum: FedAvgM momentum (``server_momentum``).
        beta1, beta2: first and second moment decay (``beta_1``, ``beta_2``).
        tau: adaptivity (``tau``; Reddi et al. use 1e-3, Flower's legacy FedAdam 1e-9).
    """

    kind: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"server optimizer must be one of {SERVER_OPTIMIZERS}, got {self.kind!r}")

    def step(
        self, current: np.ndarray, delta: np.ndarray, state: dict[str, np.ndarray], round_: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The new global vector and optimiser state after round ``round_`` (1-based).

        ``current`` and ``delta`` are flat float vectors of one layout; ``state`` is what the
        previous call returned (``{}`` in the first round). Inputs are not modified.
        """
        delta = delta.astype(np.float32)
        if self.kind == "fedavg":
            return current + np.float32(self.lr) * delta, {}
        if self.kind == "fedavgm":
            v = delta if "v" not in state else np.float32(self.momentum) * state["v"] + delta
            return current + np.float32(self.lr) * v, {"v": v}
        m = np.zeros_like(delta) if "m" not in state else state["m"]
        v = np.zeros_like(delta) if "v" not in state else state["v"]
        m = np.float32(self.beta1) * m + np.float32(1 - self.beta1) * delta
        sq = delta * delta
        if self.kind == "fedadam":
            v = np.float32(self.beta2) * v + np.float32(1 - self.beta2) * sq
            lr = self.lr * np.sqrt(1 - self.beta2 ** (round_ + 1.0)) / (1 - self.beta1 ** (round_ + 1.0))
        else:  # fedyogi
            v = v - np.float32(1 - self.beta2) * sq * np.sign(v - sq)
            lr = self.lr
        return current + np.float32(lr) * m / (np.sqrt(v) + np.float32(self.tau)), {"m": m, "v": v}
