"""Typed, validated configuration (frozen dataclasses, one place).

Each config validates itself in ``__post_init__`` and raises
:class:`~fedrlhf.errors.ConfigError` naming the field. ``from_dict`` builds a
config from a mapping (a TOML table) and refuses unknown keys, so a typo in a
config file is an error instead of a silently ignored setting.
"""

from fedrlhf.config.aggregation import RobustConfig, SecAggConfig, UserDPConfig
from fedrlhf.config.base import (
    DEFAULT_BACKBONE,
    DEFAULT_POLICY,
    DP_RECIPE,
    MAX_DELTA,
    NON_PRIVATE_DEFAULTS,
    TASKS,
    from_dict,
)
from fedrlhf.config.federation import (
    CLIENT_LR_SCHEDULES,
    FederationConfig,
    PolicySettings,
    WarmStartConfig,
    client_lr_scale,
)
from fedrlhf.config.load import load_run_config, run_config_from_dict
from fedrlhf.config.run import RunConfig
from fedrlhf.config.simulation import AttackSettings, CohortConfig
from fedrlhf.config.training import ModelConfig, PrivacyConfig, TrainConfig

__all__ = [
    "CLIENT_LR_SCHEDULES",
    "DEFAULT_BACKBONE",
    "DEFAULT_POLICY",
    "DP_RECIPE",
    "MAX_DELTA",
    "NON_PRIVATE_DEFAULTS",
    "TASKS",
    "AttackSettings",
    "CohortConfig",
    "FederationConfig",
    "ModelConfig",
    "PolicySettings",
    "PrivacyConfig",
    "RobustConfig",
    "RunConfig",
    "SecAggConfig",
    "TrainConfig",
    "UserDPConfig",
    "WarmStartConfig",
    "client_lr_scale",
    "from_dict",
    "load_run_config",
    "run_config_from_dict",
]
