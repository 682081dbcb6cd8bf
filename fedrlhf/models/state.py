"""The federated payload: a model's trainable state as named float32 numpy arrays.

Only LoRA adapters and the head ever travel; the frozen backbone never does.
Names follow ``model.named_parameters()`` and the layout (name -> shape, in
sorted name order) is fixed for a given config, so updates flatten into one
vector with a stable order.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrlhf.errors import ModelError
from fedrlhf.models.reward import RewardModel


def _params(model: RewardModel, part: str) -> dict[str, torch.nn.Parameter]:
    chosen = {n: p for n, p in model.named_parameters() if model.part_of(n) == part}
    if not chosen:
        raise ModelError(f"the model has no {part!r} trainable parameters")
    return dict(sorted(chosen.items()))


def state_layout(model: RewardModel, part: str = "global") -> dict[str, tuple[int, ...]]:
    """Name -> shape of the ``part`` ("global" or "personal") state, in payload order."""
    return {n: tuple(p.shape) for n, p in _params(model, part).items()}


def get_trainable_state(model: RewardModel, part: str = "global") -> dict[str, np.ndarray]:
    """Copy the ``part`` parameters out as float32 numpy arrays."""
    return {
        n: p.detach().cpu().numpy().astype(np.float32, copy=True) for n, p in _params(model, part).items()
    }


def set_trainable_state(model: RewardModel, state: dict[str, np.ndarray], part: str = "global") -> None:
    """Load ``state`` into the ``part`` parameters; names and shapes must match exactly."""
    params = _params(model, part)
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or extra:
        raise ModelError(
            f"{part} state does not match the model: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(extra)} unexpected (e.g. {extra[:1]})"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = np.asarray(state[name])
            if tuple(value.shape) != tuple(param.shape):
                raise ModelError(
                    f"{part} state {name!r}: shape {value.shape} != model's {tuple(param.shape)}"
                )
            if not np.all(np.isfinite(value)):
                raise ModelError(f"{part} state {name!r} holds non-finite values")
            param.copy_(torch.from_numpy(value.astype(np.float32, copy=False)))


def flatten_state(state: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate a state (sorted names) into one float32 vector."""
    return np.concatenate([np.ravel(state[n]).astype(np.float32, copy=False) for n in sorted(state)])


def unflatten_state(vector: np.ndarray, layout: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten_state` for a given layout."""
    total = sum(int(np.prod(shape)) for shape in layout.values())
    if vector.size != total:
        raise ModelError(f"vector of size {vector.size} does not fit a layout of size {total}")
    out, offset = {}, 0
    for name in sorted(layout):
        size = int(np.prod(layout[name]))
        out[name] = vector[offset : offset + size].reshape(layout[name]).astype(np.float32, copy=False)
        offset += size
    return out
