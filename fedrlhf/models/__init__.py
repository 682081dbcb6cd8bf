"""Reward model (backbone + LoRA + head), losses, and the trainable-state payload."""

from fedrlhf.models.losses import LOSSES, bradley_terry, dpo, kto, rating_logistic
from fedrlhf.models.reward import GLOBAL_ADAPTER, PERSONAL_ADAPTER, RewardModel
from fedrlhf.models.state import (
    flatten_state,
    get_trainable_state,
    set_trainable_state,
    state_layout,
    unflatten_state,
)
from fedrlhf.models.tiny import save_tiny_backbone

__all__ = [
    "LOSSES",
    "GLOBAL_ADAPTER",
    "PERSONAL_ADAPTER",
    "RewardModel",
    "bradley_terry",
    "dpo",
    "kto",
    "rating_logistic",
    "flatten_state",
    "get_trainable_state",
    "set_trainable_state",
    "state_layout",
    "unflatten_state",
    "save_tiny_backbone",
]
