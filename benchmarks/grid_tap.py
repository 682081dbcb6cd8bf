"""What crosses the wire in a simulated run: serialized message sizes and the clients' own seconds.

``tapped_simulation(cfg, run_dir)`` runs ``fedrlhf.simulation.run.run_simulation`` unchanged
except that the server's Grid is wrapped in a :class:`GridTap`, which counts every message it
passes (``recorddict_to_proto(content).ByteSize()``, as ``fedrlhf.federation.secure_server`` counts the
secure protocol) by message type and round, and keeps the ``seconds`` each train reply reports
(the device's own ``client_round`` time). The wrapper only observes: messages pass through as
they are.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast


def content_bytes(msg: Any) -> int:
    """Serialized size of a message's content (0 for an error reply, which has none)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(msg.content).ByteSize() if msg.has_content() else 0


class GridTap:
    """A Grid that counts bytes down (server -> nodes) and up per message type and round.

    ``round`` (from 1) is moved on by the caller when a round ends; the device-id queries before
    a round count under that round as type ``query``, the final evaluation as ``evaluate``.
    """

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.round = 1
        self.bytes: dict[tuple[int, str, str], int] = defaultdict(int)  # (round, type, up|down)
        self.messages: dict[tuple[int, str, str], int] = defaultdict(int)
        self.client_seconds: dict[int, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _count(self, messages: Iterable[Any], way: str) -> None:
        for m in messages:
            key = (self.round, str(m.metadata.message_type), way)
            self.bytes[key] += content_bytes(m)
            self.messages[key] += 1
            if way == "up" and m.has_content() and "metrics" in m.content.metric_records:
                seconds = m.content.metric_records["metrics"].get("seconds")
                if isinstance(seconds, float) and str(m.metadata.message_type) == "train":
                    self.client_seconds[self.round].append(seconds)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        messages = list(messages)
        self._count(messages, "down")
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._count(replies, "up")
        return replies

    def push_messages(self, messages: Iterable[Any]) -> list[str]:  # the secure rounds push and pull
        messages = list(messages)
        self._count(messages, "down")
        return list(self._grid.push_messages(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        replies = list(self._grid.pull_messages(message_ids))
        self._count(replies, "up")
        return replies

    def per_round(self, message_type: str = "train") -> list[dict[str, int]]:
        """Bytes and messages of ``message_type`` in each round (1, 2, ...)."""
        rounds = sorted({r for r, t, _ in self.bytes if t == message_type and r > 0})
        return [
            {
                "round": r,
                "bytes_down": self.bytes[(r, message_type, "down")],
                "bytes_up": self.bytes[(r, message_type, "up")],
                "messages_down": self.messages[(r, message_type, "down")],
                "messages_up": self.messages[(r, message_type, "up")],
            }
            for r in rounds
        ]

    def totals(self) -> dict[str, dict[str, int]]:
        """Bytes per message type over the whole run (identification, training, evaluation)."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"down": 0, "up": 0})
        for (_, kind, way), size in self.bytes.items():
            out[kind][way] += size
        return dict(out)


@contextlib.contextmanager
def _tap_server(taps: list[GridTap]) -> Iterator[None]:
    """Make ``run_server`` (``run_simulation`` imports it when called) run over a :class:`GridTap`."""
    import fedrlhf.federation.server as server

    original = server.run_server

    def run_server(grid: Any, cfg: Any, run_dir: Path, **kw: Any) -> Any:
        tap = GridTap(grid)
        taps.append(tap)
        on_round = kw.get("on_round")

        def next_round(row: dict[str, Any]) -> None:  # what follows round r belongs to r + 1
            tap.round = row["round"] + 1
            if on_round is not None:
                on_round(row)

        return original(cast(Any, tap), cfg, run_dir, **{**kw, "on_round": next_round})

    server.run_server = run_server
    try:
        yield
    finally:
        server.run_server = original


def tapped_simulation(
    cfg: Any, run_dir: Path, *, workers: int | None = None
) -> tuple[dict[str, Any], GridTap]:
    """``run_simulation(cfg, run_dir)`` with the server's Grid tapped; (its report, the tap)."""
    from fedrlhf.simulation.run import run_simulation

    box: list[GridTap] = []
    with _tap_server(box):
        report = run_simulation(cfg, run_dir, workers=workers, progress=False)
    if not box:
        raise RuntimeError("the simulation never started its server: nothing was measured")
    return report, box[0]
