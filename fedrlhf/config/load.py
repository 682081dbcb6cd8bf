"""Building a :class:`RunConfig` from TOML tables, flat Flower keys or a TOML file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from fedrlhf.config.aggregation import RobustConfig, SecAggConfig, UserDPConfig
from fedrlhf.config.base import from_dict
from fedrlhf.config.federation import FederationConfig, PolicySettings, WarmStartConfig
from fedrlhf.config.run import RunConfig
from fedrlhf.config.simulation import AttackSettings, CohortConfig
from fedrlhf.config.training import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested tables (TOML) or flat ``section.key`` keys (Flower)."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            nested.setdefault(key, {}).update(value)
        elif "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            raise ConfigError(
                f"setting {key!r} belongs to no section; use section.key (e.g. federation.rounds)"
            )
    unknown = sorted(set(nested) - set(_SECTION_TYPES))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {sorted(_SECTION_TYPES)}")
    parts: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        values = dict(nested.get(name, {}))
        tuples = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
        for key in tuples & set(values):
            if isinstance(values[key], str):
                values[key] = tuple(v.strip() for v in values[key].split(",") if v.strip())
        for key, value in list(values.items()):
            if value == "" and key in _OPTIONAL_NUMBERS.get(name, ()):
                values[key] = None
        parts[name] = from_dict(cls, values, section=name)
    return RunConfig(**parts)


_SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "privacy": PrivacyConfig,
    "federation": FederationConfig,
    "robust": RobustConfig,
    "user_dp": UserDPConfig,
    "cohort": CohortConfig,
    "attack": AttackSettings,
    "secagg": SecAggConfig,
    "warm_start": WarmStartConfig,
    "policy": PolicySettings,
}
_OPTIONAL_NUMBERS = {
    "privacy": ("target_epsilon", "noise_multiplier", "lifetime_epsilon"),
    "federation": ("server_lr",),
}


def load_run_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config and apply ``key=value`` overrides (values parsed as TOML)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text)") from None
    for key, value in data.items():
        if "." not in key and not isinstance(value, dict):
            raise ConfigError(
                f"{path}: {key} = {value!r} is not a table; write [{key}] and put its settings under it"
            )
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. federation.rounds=5")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        section, name = key.strip().split(".", 1)
        data.setdefault(section, {})[name] = value
    return run_config_from_dict(data)
