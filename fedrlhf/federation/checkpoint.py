"""Server checkpoints: written atomically after every round, read back on restart.

``RUN_DIR/checkpoint/`` holds ``global.safetensors`` (the global trainable state)
and ``state.json`` (round, RNG, per-round history, user-level DP accountant,
reputation, and a hash of the run config so a different config never resumes).
Paths inside the run directory enter the hash relative to it, so a moved run
directory resumes. A checkpoint that cannot be read is an error naming the file,
never a silent restart from round 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fedrlhf.config import RunConfig
from fedrlhf.errors import ConfigError, ModelError
from fedrlhf.io import atomic_directory, recover_directory


@dataclasses.dataclass
class ServerState:
    """Everything needed to continue a run after the last completed round."""

    round: int
    global_state: dict[str, np.ndarray]
    rng: dict[str, Any]
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    user_dp: dict[str, Any] | None = None
    reputation: dict[str, Any] | None = None
    # the run's devices: [{device, key, node}], each device id bound to its node's key (devices.py)
    devices: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final_eval: dict[str, Any] | None = None  # federated evaluation of the final model (not checkpointed)
    server_opt: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # momentum / moments
    robust_center: np.ndarray | None = None  # the last accepted aggregate (centered clipping's centre)
    population: int = 0  # devices the round sampled from (set by each round; not checkpointed)


def config_hash(cfg: RunConfig, run_dir: Path | None = None) -> str:
    """Hash of the settings that shape the result (not where files go).

    With ``run_dir``, an absolute path under it (e.g. the simulation's clients directory)
    counts relative to it, so the same run moved elsewhere hashes the same.
    """
    data = cfg.to_dict()
    # not: how long to wait, and how many rounds (a finished run continues with more rounds)
    data["federation"] = {k: v for k, v in data["federation"].items() if k not in ("timeout", "rounds")}
    if run_dir is not None:
        root = Path(run_dir).resolve()
        data = {s: {k: _within(v, root) for k, v in values.items()} for s, values in data.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _within(value: Any, root: Path) -> Any:
    """``value`` relative to ``root`` (as ``<run>/...``) if it is an absolute path under it."""
    if not isinstance(value, str) or not value or not Path(value).is_absolute():
        return value
    try:
        return f"<run>/{Path(value).resolve().relative_to(root).as_posix()}"
    except ValueError:  # outside the run directory
        return value


def save_checkpoint(run_dir: Path, state: ServerState, cfg: RunConfig) -> None:
    """Atomically replace ``run_dir/checkpoint`` with ``state``."""
    meta = {
        "round": state.round,
        "rng": state.rng,
        "history": state.history,
        "user_dp": state.user_dp,
        "reputation": state.reputation,
        "devices": state.devices,
        "config_hash": config_hash(cfg, run_dir),
    }
    with atomic_directory(run_dir / "checkpoint", legacy=("state.json",)) as tmp:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in state.global_state.items()},
            str(tmp / "global.safetensors"),
        )
        if state.server_opt:
            save_file(
                {k: np.ascontiguousarray(v) for k, v in state.server_opt.items()},
                str(tmp / "server_opt.safetensors"),
            )
        if state.robust_center is not None:
            save_file({"center": np.ascontiguousarray(state.robust_center)}, str(tmp / "center.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, default=_json_default) + "\n")


def load_checkpoint(run_dir: Path, cfg: RunConfig) -> ServerState | None:
    """The last completed round's state, or None for a fresh run (no checkpoint, or an empty one).

    Raises :class:`ModelError` naming the file if the checkpoint is incomplete or corrupt, and
    :class:`ConfigError` if a run with other settings wrote it.
    """
    path = run_dir / "checkpoint"
    recover_directory(path)
    if not path.is_dir() or not any(path.iterdir()):
        return None
    meta = _read_meta(path / "state.json")
    if meta["config_hash"] not in (config_hash(cfg, run_dir), config_hash(cfg)):  # also pre-move hashes
        raise ConfigError(
            f"{path} was written by a run with different settings; use another run directory "
            "(fedrlhf simulate --out, flwr run -c 'run-dir=\"...\"'), or the same settings to "
            "resume (only federation.rounds and federation.timeout may change)"
        )
    return ServerState(
        round=meta["round"],
        global_state=_read_global(path / "global.safetensors"),
        rng=meta["rng"],
        history=meta["history"],
        user_dp=meta.get("user_dp"),
        reputation=meta.get("reputation"),
        devices=[d if isinstance(d, dict) else {"device": d, "key": ""} for d in meta.get("devices") or []],
        server_opt=_read_global(opt) if (opt := path / "server_opt.safetensors").exists() else {},
        robust_center=_read_global(c)["center"] if (c := path / "center.safetensors").exists() else None,
    )


_META_TYPES: dict[str, tuple[type, ...]] = {
    "round": (int,),
    "rng": (dict,),
    "history": (list,),
    "config_hash": (str,),
    "user_dp": (dict, type(None)),
    "reputation": (dict, type(None)),
    "devices": (list, type(None)),
}
_OPTIONAL_META = ("user_dp", "reputation", "devices")


def _corrupt(file: Path, what: str) -> ModelError:
    return ModelError(f"checkpoint file {file}: {what}; move {file.parent} away to start over")


def _read_meta(file: Path) -> dict[str, Any]:
    """``state.json``, checked: every key present with its type, the RNG state usable."""
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _corrupt(file, "missing (the checkpoint is incomplete)") from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise _corrupt(file, f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise _corrupt(file, f"holds a JSON {type(meta).__name__}, not an object")
    missing = [k for k in _META_TYPES if k not in meta and k not in _OPTIONAL_META]
    if missing:
        raise _corrupt(file, f"lacks {', '.join(missing)}")
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, types) or isinstance(value, bool)):
            raise _corrupt(file, f"{key} is {value!r:.60}, not a {' or '.join(t.__name__ for t in types)}")
    devices = meta.get("devices") or []
    bad = [d for d in devices if not isinstance(d, str | dict) or not isinstance(_device_id(d), str)]
    if bad:
        raise _corrupt(file, f"devices holds {bad[0]!r:.60}, not a {{device, key, node}} entry")
    if meta["round"] < 0:
        raise _corrupt(file, f"round is {meta['round']}")
    try:
        np.random.default_rng().bit_generator.state = meta["rng"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(file, f"rng is not a PCG64 state ({exc})") from None
    return meta


def _device_id(entry: Any) -> Any:
    """A ``devices`` entry's device id (entries of older checkpoints are the id alone)."""
    return entry.get("device") if isinstance(entry, dict) else entry


def _read_global(file: Path) -> dict[str, np.ndarray]:
    """``global.safetensors``: float arrays, all finite."""
    try:
        state = load_file(str(file))
    except FileNotFoundError:
        raise _corrupt(file, "missing (the checkpoint is incomplete)") from None
    except (OSError, ValueError, SafetensorError) as exc:  # e.g. truncated
        raise _corrupt(file, f"unreadable ({exc})") from None
    if not state:
        raise _corrupt(file, "holds no arrays")
    for name, value in state.items():
        if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            raise _corrupt(file, f"array {name!r} is not finite float values")
    return state


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
