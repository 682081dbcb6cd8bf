"""Flower's simulation engine, made to cost what the messages in flight cost, not the cohort.

Flower 1.41's engine hands messages to its workers from one driver thread,
``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``: every 0.1 s it calls
``state.get_message_ins(node_id, limit=1)`` for *every* simulated node, and each call scans
*every* stored message. A sweep is O(nodes x messages), done holding the GIL: with 2,000
nodes and 60 messages in flight the driver spent its core scanning (py-spy: 98 % of its busy
samples), a message waits for the sweep to reach its node, and the client workers get what
is left of the CPU (on 2 cores, 2 workers did 1.16x the work of one). Identifying a cohort
at start, 10,000 messages to 10,000 nodes, is 10^8 checks per sweep.

:func:`faster_engine` swaps in :func:`add_messages_to_queue`, the same hand-over done by one
pass over the stored messages per sweep (O(messages)): the same checks (expiry, federation,
via the state's own ``_check_stored_messages``), at most one message per node per sweep,
marked delivered the same way. It applies to the in-memory link state the simulation uses;
any other state object, or a Flower without this function, runs Flower's own code.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from queue import Queue
from typing import Any

try:  # Flower's own hand-over, kept to run for states this one does not know
    from flwr.server.superlink.fleet.vce import vce_api
except ImportError:  # another Flower layout: its own engine, untouched
    vce_api = None  # type: ignore[assignment]
_FLOWER_ADD = getattr(vce_api, "add_messages_to_queue", None)
_NEEDS = ("lock", "message_ins_store", "_check_stored_messages")


def _undelivered(state: Any, nodes: Mapping[int, Any]) -> list[Any]:
    """The first undelivered message for each node of ``nodes``, marked delivered (one pass)."""
    from flwr.supercore.date import now

    chosen: dict[int, Any] = {}
    with state.lock:
        for msg_id in list(state.message_ins_store.keys()):
            state._check_stored_messages({msg_id})  # drops it if expired or out of federation
            msg = state.message_ins_store.get(msg_id)
            if msg is None:
                continue
            dst = msg.metadata.dst_node_id
            if dst in nodes and dst not in chosen and msg.metadata.delivered_at == "":
                chosen[dst] = msg
        delivered_at = now().isoformat()
        for msg in chosen.values():
            msg.metadata.delivered_at = delivered_at
    return list(chosen.values())


def add_messages_to_queue(
    state: Any, queue: Queue[Any], nodes_mapping: Mapping[int, Any], f_stop: threading.Event
) -> None:
    """Put the messages for the simulated nodes in ``queue`` (Flower's function, one pass per sweep)."""
    if not all(hasattr(state, name) for name in _NEEDS) and _FLOWER_ADD is not None:
        _FLOWER_ADD(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        for msg in _undelivered(state, nodes_mapping):
            queue.put(msg)
        f_stop.wait(0.1)


@contextmanager
def faster_engine() -> Iterator[bool]:
    """Run Flower's simulation with :func:`add_messages_to_queue`; yields whether it applied."""
    if vce_api is None or _FLOWER_ADD is None:
        yield False
        return
    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield True
    finally:
        vce_api.add_messages_to_queue = _FLOWER_ADD
