"""Which device each Flower node is, and what happened to each device asked in a round.

A node tells the server its device id (its data directory's name) in answer to a query.
That name alone is not proof: any node can report any name. With SuperNode
authentication (``flower-superlink --enable-supernode-auth``) every node is one registered
public key, and the SuperLink hands the ServerApp that key with the node
(``grid.get_nodes()``). The :class:`Roster` binds each device id to that key for the whole
life of a run directory (the binding is checkpointed):

- a device id claimed by two nodes at once is refused for both (the server cannot tell
  which one is real), loudly (an ERROR log line and the report), unless the id is bound to a
  key and exactly one of them holds it: that one takes part, the others are refused;
- a device id bound to one key and claimed by a node with another key is refused, and a key
  bound to one device id cannot claim another.

Guaranteed with SuperNode auth: the updates counted as device X for the whole run come from
the holder of the private key that first claimed X. Not guaranteed: that this first claim
was by the rightful device (trust on first use; the operator sees every binding, with the
key's ``ssh-keygen -lf`` fingerprint, in the report), nor anything without SuperNode auth,
where a node's key is a fresh one per connection and only the duplicate check applies.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

_LOG = logging.getLogger(__name__)

_ERROR_WORDS = {
    0: "failed (unknown error)",
    1: "could not load the ClientApp",
    2: "the ClientApp raised an exception",
    3: "the message was not available to the device",
    4: "its reply was lost",
    5: "the device went offline",
    6: "a mod refused the message",
    7: "the app bundle was invalid",
    8: "the ClientApp process crashed",
    1001: "refused by the device's privacy policy",  # client_app.PRIVACY_REFUSED
    1002: "refused: the round's settings do not match the device's",  # client_app.SETTINGS_REFUSED
}


def key_fingerprint(public_key: bytes) -> str:
    """The key's OpenSSH fingerprint (as ``ssh-keygen -lf KEY.pub`` prints it); '' for no key.

    Flower gives a deployed node's key as PEM SubjectPublicKeyInfo; anything else (Flower's
    simulation gives each node random bytes, new in every simulation) is no key.
    """
    try:
        key = serialization.load_pem_public_key(public_key)
        blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        wire = base64.b64decode(blob.split()[1])
    except (ValueError, TypeError, IndexError, UnsupportedAlgorithm):
        return ""
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def error_reason(code: int, reason: str | None) -> str:
    """A Flower error reply in plain words: what failed, then Flower's (or the device's) reason."""
    words = _ERROR_WORDS.get(int(code), f"failed (error code {code})")
    detail = " ".join(str(reason or "").split())[:300]
    return f"{words}: {detail}" if detail else words


@dataclasses.dataclass
class Roster:
    """The run's devices: device id -> node id (taking part now) and -> key fingerprint (bound).

    ``keys`` outlives the nodes: it is checkpointed (``ServerState.devices``) so that a resumed
    run keeps every binding. ``events`` are the identification queries of this process, for
    the report (asked node ids, devices identified, nodes that failed and why).
    """

    nodes: dict[str, int] = dataclasses.field(default_factory=dict)
    keys: dict[str, str] = dataclasses.field(default_factory=dict)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, devices: Iterable[Mapping[str, Any] | str]) -> Roster:
        """The bindings a checkpoint's ``devices`` list holds (nodes change between runs)."""
        entries = [d if isinstance(d, Mapping) else {"device": d} for d in devices]  # older: ids alone
        return cls(keys={str(d["device"]): str(d.get("key") or "") for d in entries})

    def to_checkpoint(self) -> list[dict[str, Any]]:
        """``[{"device", "key", "node"}]`` sorted by device (node: None when not online now)."""
        return [{"device": d, "key": k, "node": self.nodes.get(d)} for d, k in sorted(self.keys.items())]

    def bind(self, claims: Mapping[int, str], keys: Mapping[int, str], online: set[int]) -> dict[int, str]:
        """Add the claims (node id -> device id) that stand; returns node id -> why, for the rest.

        ``keys``: node id -> key fingerprint ('' without SuperNode auth). ``online``: the node
        ids online now (a device whose node left may come back as a new node).
        """
        refused: dict[int, str] = {}
        by_device: dict[str, list[int]] = {}
        for node, device in claims.items():
            by_device.setdefault(device, []).append(node)
        key_owner = {k: d for d, k in self.keys.items() if k}
        for device, nodes in sorted(by_device.items()):
            holder, bound = self.nodes.get(device), self.keys.get(device, "")
            if bound:  # a node with another key is not this device, whoever else claims it
                for node in nodes:
                    if keys.get(node, "") not in ("", bound):
                        refused[node] = (
                            f"device id {device!r} is bound to key {bound}, this node has key {keys[node]}"
                        )
                nodes = [n for n in nodes if n not in refused]
                if not nodes:
                    continue
            proven = bool(bound) and all(keys.get(n, "") == bound for n in nodes)  # may be a new node
            elsewhere = holder is not None and holder in online and holder not in nodes
            if len(nodes) > 1 or (elsewhere and not proven):
                others = sorted({*nodes, *([holder] if holder is not None else [])})
                for node in nodes:
                    refused[node] = f"device id {device!r} is claimed by several nodes at once {others}"
                continue
            node, key = nodes[0], keys.get(nodes[0], "")
            if key and key_owner.get(key, device) != device:
                refused[node] = f"its key {key} is bound to device id {key_owner[key]!r}, not {device!r}"
            else:
                self.nodes[device] = node
                self.keys[device] = key or bound
        for node, why in refused.items():
            _LOG.error("node %s refused: %s", node, why)
        return refused


def participation(
    asked: list[str],
    answered: Iterable[str],
    errors: Mapping[str, str],
    rejected: Iterable[str],
    missing: str,
) -> dict[str, str]:
    """Why each asked device that is not in ``answered`` failed: its error reply (``errors``:
    device -> the error in words), a rejected update, else ``missing`` (e.g. no reply in time)."""
    done, bad = set(answered), set(rejected)
    failed = {}
    for device in asked:
        if device in done:
            continue
        if device in errors:
            failed[device] = errors[device]
        elif device in bad:
            failed[device] = "its update was rejected by the server's checks"
        else:
            failed[device] = missing
    return failed
