"""The simulation engine's message hand-over: one pass over the stored messages per sweep."""

from __future__ import annotations

import threading
from queue import Queue
from types import SimpleNamespace

from flwr.server.superlink.fleet.vce import vce_api

from fedrlhf.simulation.engine import _undelivered, add_messages_to_queue, faster_engine


class _State:
    """The parts of Flower's in-memory link state the hand-over reads."""

    def __init__(self, messages: dict[str, SimpleNamespace], expired: set[str] = frozenset()) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = messages
        self.expired = set(expired)
        self.checked: list[str] = []

    def _check_stored_messages(self, ids: set[str]) -> None:
        for msg_id in ids:
            self.checked.append(msg_id)
            if msg_id in self.expired:
                self.message_ins_store.pop(msg_id, None)


def _msg(dst: int, delivered: str = "") -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=dst, delivered_at=delivered))


def test_one_message_per_node_per_sweep_only_for_simulated_nodes_and_marked_delivered() -> None:
    store = {"a": _msg(1), "b": _msg(1), "c": _msg(2), "d": _msg(3), "e": _msg(2, "earlier"), "x": _msg(4)}
    state = _State(store, expired={"x"})
    got = _undelivered(state, {1: 0, 2: 1, 4: 3})
    assert got == [store["a"], store["c"]]  # node 1's first, node 2's undelivered, not node 3 (not ours)
    assert all(m.metadata.delivered_at not in ("", "earlier") for m in got)
    assert store["b"].metadata.delivered_at == "" and "x" not in store  # the expired one is dropped
    assert sorted(state.checked) == ["a", "b", "c", "d", "e", "x"]  # every message checked once
    assert _undelivered(state, {1: 0, 2: 1}) == [store["b"]]  # the next sweep: node 1's second
    assert _undelivered(state, {1: 0, 2: 1}) == []


def test_the_sweep_loop_queues_messages_until_stopped() -> None:
    state, queue, stop = _State({"a": _msg(7)}), Queue(), threading.Event()
    thread = threading.Thread(target=add_messages_to_queue, args=(state, queue, {7: 0}, stop))
    thread.start()
    assert queue.get(timeout=5) is state.message_ins_store["a"]
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and queue.empty()


def test_flowers_function_is_swapped_in_for_the_run_only_and_runs_for_other_states() -> None:
    flowers = vce_api.add_messages_to_queue
    with faster_engine() as applied:
        assert applied and vce_api.add_messages_to_queue is add_messages_to_queue
        called = []

        class Other:
            def get_message_ins(self, node_id: int, limit: int) -> list:
                called.append(node_id)
                stop.set()
                return []

        stop = threading.Event()
        add_messages_to_queue(Other(), Queue(), {5: 0}, stop)  # not the in-memory state: Flower's own loop
        assert called == [5]
    assert vce_api.add_messages_to_queue is flowers
