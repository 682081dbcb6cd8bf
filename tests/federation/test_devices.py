"""Device identity (issue 28.2) and per-round participation (28.3).

A loopback Grid stands in for the SuperLink's network: it lists nodes with the key the
SuperLink would give the ServerApp (``grid.get_nodes()``) and answers each message with
the reply a device would send; the server code under test is the production one.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # type: ignore[attr-defined]

from fedrlhf.federation.checkpoint import load_checkpoint, save_checkpoint
from fedrlhf.federation.client_app import PRIVACY_REFUSED
from fedrlhf.federation.devices import Roster, error_reason, key_fingerprint
from fedrlhf.federation.payload import message_bytes
from fedrlhf.federation.server import identify_devices, run_round
from tests.federation.test_server_round import (  # noqa: F401 - _server_identity: an autouse fixture
    DEVICES,
    LAYOUT,
    NODES,
    _cfg,
    _LoopbackGrid,
    _server_identity,
    _state,
    honest,
)

Answer = Callable[[Message, int], Message | None]


def _pem(path: Path) -> bytes:
    """A node key as Flower hands it to the ServerApp: PEM SubjectPublicKeyInfo."""
    key = serialization.load_ssh_public_key(path.read_bytes())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class _Nodes:
    """Online nodes (node id -> PEM key) answering queries with ``answer`` (None: no reply)."""

    def __init__(self, keys: dict[int, bytes], answer: Answer) -> None:
        self.keys, self.answer = keys, answer

    def get_node_ids(self) -> list[int]:
        return list(self.keys)

    def get_nodes(self) -> list[NodeInfo]:
        return [NodeInfo(node_id=n, public_key=k) for n, k in self.keys.items()]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = [self.answer(m, m.metadata.dst_node_id) for m in messages]
        return [r for r in replies if r is not None]


def _says(names: dict[int, str]) -> Answer:
    def answer(msg: Message, node: int) -> Message | None:
        if node not in names:
            return None
        return Message(RecordDict({"config": ConfigRecord({"device-id": names[node]})}), reply_to=msg)

    return answer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fedrlhf.federation.certs import generate_node_keypair

    root = tmp_path_factory.mktemp("keys")
    return {n: generate_node_keypair(root, n).public for n in ("device-0", "device-1", "impostor")}


def test_fingerprint_is_what_ssh_keygen_prints(keys: dict[str, Path]) -> None:
    fingerprint = key_fingerprint(_pem(keys["device-0"]))
    assert fingerprint.startswith("SHA256:") and fingerprint != key_fingerprint(_pem(keys["device-1"]))
    assert key_fingerprint(b"\x01" * 32) == ""  # Flower's simulation: random bytes, no key
    if shutil.which("ssh-keygen"):
        out = subprocess.run(["ssh-keygen", "-lf", str(keys["device-0"])], capture_output=True, text=True)
        assert fingerprint in out.stdout.split()


def test_an_impostor_with_the_same_directory_name_is_refused_loudly(
    keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 28.2: a second node whose data dir has the same name took device-1's place."""
    cfg = _cfg()
    pems = {1: _pem(keys["device-0"]), 2: _pem(keys["device-1"])}
    roster = Roster()
    assert identify_devices(
        _Nodes(pems, _says({1: "device-0", 2: "device-1"})), cfg, expected=2, timeout=5, roster=roster
    ) == {"device-0": 1, "device-1": 2}
    # The run resumes later (new process): the bindings come from the checkpoint.
    roster = Roster.from_checkpoint(roster.to_checkpoint())
    grid = _Nodes({**pems, 3: _pem(keys["impostor"])}, _says({1: "device-0", 2: "device-1", 3: "device-1"}))
    with caplog.at_level(logging.ERROR):
        nodes = identify_devices(grid, cfg, expected=3, timeout=5, roster=roster)
    assert nodes == {"device-0": 1, "device-1": 2}  # the key device-1 is bound to tells them apart
    failed = roster.events[-1]["failed"]
    assert set(failed) == {"3"} and "bound to key " + key_fingerprint(pems[2]) in failed["3"]
    assert any(r.levelno == logging.ERROR and "device-1" in r.getMessage() for r in caplog.records)
    # Asked again before the next round (it is still unknown), it gets the same reason.
    assert identify_devices(grid, cfg, expected=3, timeout=5, roster=roster) == nodes
    assert roster.events[-1]["failed"] == failed
    # Two nodes claim an id never bound before: the server cannot tell them apart, both are refused.
    twin = Roster()
    grid = _Nodes({1: pems[1], 4: _pem(keys["impostor"])}, _says({1: "device-2", 4: "device-2"}))
    assert identify_devices(grid, cfg, expected=2, timeout=5, roster=twin) == {}
    assert all("claimed by several nodes at once" in why for why in twin.events[-1]["failed"].values())
    # The impostor alone (device-1's node offline): its key is not the one device-1 is bound to.
    grid = _Nodes({1: pems[1], 3: _pem(keys["impostor"])}, _says({1: "device-0", 3: "device-1"}))
    nodes = identify_devices(grid, cfg, expected=2, timeout=5, roster=roster)
    assert nodes == {"device-0": 1, "device-1": 2}  # device-1 keeps its node (offline: its rounds fail)
    assert "bound to key " + key_fingerprint(pems[2]) in roster.events[-1]["failed"]["3"]
    # The real device-1 comes back (same registered key, same node id): it takes part again.
    grid = _Nodes(pems, _says({1: "device-0", 2: "device-1"}))
    assert identify_devices(grid, cfg, expected=2, timeout=5, roster=roster) == {"device-0": 1, "device-1": 2}
    # It reconnects as a new node while the SuperLink still lists the old one: its key proves it.
    assert roster.bind({7: "device-1"}, {7: key_fingerprint(pems[2])}, online={1, 2, 7}) == {}
    assert roster.nodes["device-1"] == 7


def test_a_key_cannot_claim_a_second_device_id(keys: dict[str, Path]) -> None:
    roster = Roster.from_checkpoint([{"device": "device-0", "key": key_fingerprint(_pem(keys["device-0"]))}])
    grid = _Nodes({5: _pem(keys["device-0"])}, _says({5: "device-9"}))
    assert identify_devices(grid, _cfg(), expected=1, timeout=5, roster=roster) == {}
    assert "bound to device id 'device-0'" in roster.events[-1]["failed"]["5"]


def test_without_keys_a_restarted_node_takes_its_device_id_back() -> None:
    """No SuperNode auth (simulation, --insecure): only the duplicate check applies."""
    roster = Roster()
    assert roster.bind({1: "a"}, {}, online={1}) == {}
    assert roster.bind({2: "a"}, {}, online={1, 2}) != {}  # node 1 still online: a duplicate
    assert roster.bind({2: "a"}, {}, online={2}) == {} and roster.nodes == {"a": 2}


def test_identification_failures_are_listed_with_their_reason() -> None:
    """Issue 28.3: a node that failed the id query was invisible."""

    def answer(msg: Message, node: int) -> Message | None:
        if node == 2:
            return Message(Error(code=2, reason="ValueError: no device directory"), reply_to=msg)
        return _says({1: "device-0"})(msg, node)

    roster = Roster()
    grid = _Nodes({1: b"", 2: b"", 3: b""}, answer)
    nodes = identify_devices(grid, _cfg(), expected=4, timeout=1, roster=roster)
    assert nodes == {"device-0": 1}
    event = roster.events[-1]
    assert event["expected"] == 4 and event["online"] == 3 and event["asked"] == [1, 2, 3]
    assert event["failed"] == {
        "2": "the ClientApp raised an exception: ValueError: no device directory",
        "3": "no reply within 1 s",
    }


def test_a_round_lists_who_was_asked_who_answered_who_failed_and_why() -> None:
    refused, silent = DEVICES[1], DEVICES[3]

    def answer(msg: Message, device: str) -> Message:
        if device == refused:
            why = f"{device}: this round would spend epsilon 9.1 of a lifetime budget of 8"
            return Message(Error(code=PRIVACY_REFUSED, reason=why), reply_to=msg)
        return honest(msg, device)

    class _Drops(_LoopbackGrid):
        def send_and_receive(
            self, messages: Iterable[Message], *, timeout: float | None = None
        ) -> list[Message]:  # noqa: E501
            replies = super().send_and_receive(messages)
            return [r for r in replies if r.metadata.src_node_id != NODES[silent]]

    row = run_round(_Drops(answer, NODES), _cfg(), _state(), NODES)  # type: ignore[arg-type]
    assert row["asked"] == DEVICES and row["answered"] == [DEVICES[0], DEVICES[2]]
    assert row["failed"] == {
        refused: f"refused by the device's privacy policy: {refused}: this round would spend epsilon "
        "9.1 of a lifetime budget of 8",
        silent: "no reply within federation.timeout (3600 s)",
    }
    assert row["clients_ok"] == 2 and row["failures"] == {"error": 1}


def test_a_round_lists_the_epsilon_each_device_reported() -> None:
    """Each device's ledger total as it reported it; a device that reports none (or NaN) is absent."""
    spent = {DEVICES[0]: 2.5, DEVICES[1]: 3.25, DEVICES[2]: float("nan")}

    def answer(msg: Message, device: str) -> Message:
        reply = honest(msg, device)
        if device in spent:
            reply.content.metric_records["metrics"]["epsilon"] = spent[device]
        return reply

    row = run_round(_LoopbackGrid(answer, NODES), _cfg(), _state(), NODES)  # type: ignore[arg-type]
    assert row["epsilon_by_device"] == {DEVICES[0]: 2.5, DEVICES[1]: 3.25}
    assert row["record_epsilon_max"] == 3.25


def test_a_plain_round_counts_the_bytes_of_the_serialized_messages() -> None:
    """Not the arrays alone: the run config sent with each model and the reply's names, metrics."""
    sent, received = [], []

    def answer(msg: Message, device: str) -> Message:
        sent.append(message_bytes(msg))
        received.append(message_bytes(reply := honest(msg, device)))
        return reply

    row = run_round(_LoopbackGrid(answer, NODES), _cfg(), _state(), NODES)  # type: ignore[arg-type]
    assert row["bytes_down"] == sum(sent) and row["bytes_up"] == sum(received) and len(sent) == len(DEVICES)
    floats = sum(int(np.prod(s)) for s in LAYOUT.values())
    assert min(sent) > 4 * floats + 1000  # the config rides along


def test_checkpoint_keeps_the_device_bindings(tmp_path: Path) -> None:
    cfg = _cfg()
    state = _state()
    state.devices = [{"device": "device-0", "key": "SHA256:abc", "node": 7}]
    save_checkpoint(tmp_path, state, cfg)
    loaded = load_checkpoint(tmp_path, cfg)
    assert loaded is not None and loaded.devices == state.devices
    assert Roster.from_checkpoint(loaded.devices).keys == {"device-0": "SHA256:abc"}


def test_a_finished_run_continues_with_more_rounds(tmp_path: Path) -> None:
    """Issue 28.5: re-running a finished run dir with federation.rounds=3 was refused."""
    from fedrlhf.config import run_config_from_dict

    state = _state()
    state.round = 2
    save_checkpoint(tmp_path, state, run_config_from_dict({"federation": {"rounds": 2}}))
    loaded = load_checkpoint(tmp_path, run_config_from_dict({"federation": {"rounds": 3}}))
    assert loaded is not None and loaded.round == 2
    np.testing.assert_array_equal(loaded.global_state["a"], state.global_state["a"])


def test_error_reason_words() -> None:
    assert error_reason(5, "") == "the device went offline"
    assert error_reason(77, "odd\n  thing") == "failed (error code 77): odd thing"
