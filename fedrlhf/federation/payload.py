"""Conversions between fedrlhf's named numpy states / configs and Flower records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedrlhf.aggregation.validate import InvalidUpdate
from fedrlhf.config import RunConfig, run_config_from_dict


def to_array_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """Named float32 arrays -> ArrayRecord (names kept, sorted)."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(state[name], dtype=np.float32)) for name in sorted(state)}
    )


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays; :class:`InvalidUpdate` (``malformed``) if one cannot be decoded."""
    out = {}
    for name, array in record.items():
        try:
            out[name] = array.numpy()
        except Exception as exc:  # noqa: BLE001 - whatever the bytes hold, it is one bad array
            why = f"array {name!r} cannot be decoded ({type(exc).__name__}: {exc})"
            raise InvalidUpdate(why, reason="malformed", name=name) from None
    return out


def decode_train_reply(content: RecordDict) -> tuple[str, dict[str, np.ndarray], dict[str, float]]:
    """A train reply's device id, named arrays and scalar metrics, as the client app sends them.

    Raises :class:`InvalidUpdate` (reason ``malformed``) if the ``arrays``, ``metrics`` or
    ``config`` record is missing, the device id is not a non-empty string, or an array cannot
    be decoded. Non-numeric metric values are left out.
    """
    missing = [
        key
        for key, records in (
            ("arrays", content.array_records),
            ("metrics", content.metric_records),
            ("config", content.config_records),
        )
        if key not in records
    ]
    if missing:
        raise InvalidUpdate(f"reply lacks its {' and '.join(missing)} record", reason="malformed")
    device = content.config_records["config"].get("device-id")
    if not isinstance(device, str) or not device:
        raise InvalidUpdate(f"reply's device-id is {device!r}, not a device name", reason="malformed")
    arrays = from_array_record(content.array_records["arrays"])
    return device, arrays, scalar_metrics(content.metric_records["metrics"])


def scalar_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A reply's scalar metrics (a MetricRecord may also hold lists; no metric of ours is one)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def message_bytes(msg: Message) -> int:
    """Bytes of a message's content as Flower serializes it for the wire (arrays, their names
    and headers, configs, metrics): what a round's ``bytes_up`` / ``bytes_down`` count."""
    return int(recorddict_to_proto(msg.content).ByteSize())


def payload_bytes(state: dict[str, np.ndarray]) -> int:
    """Bytes of the arrays themselves (what dominates a message)."""
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def run_config_record(cfg: RunConfig, **extra: Any) -> ConfigRecord:
    """The run config, flat, plus per-message extras, as a ConfigRecord."""
    return ConfigRecord({**cfg.to_flat(), **extra})


def run_config_from_record(record: ConfigRecord) -> RunConfig:
    """Inverse of :func:`run_config_record` (keys without a section are message extras, skipped)."""
    return run_config_from_dict({k: v for k, v in record.items() if "." in k})
