"""Training on this device: the personal adapter, and what joining a federation checks and counts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clients.device import ClientDevice
from clients.privacy_budget import Budget, budget
from clients.records import export_for_training
from fedrlhf.errors import DataError, PrivacyBudgetExceeded

# --------------------------------------------------------------------------- personal adapter


@dataclass(frozen=True)
class PersonalResult:
    """What :func:`train_personal` did."""

    examples: int
    steps: int
    mean_loss: float
    path: Path
    corrupt: tuple[int | str, ...] = ()  # feedback rows that failed authentication, left out


def train_personal(
    client: ClientDevice,
    *,
    global_model: str | os.PathLike[str] | None = None,
    epochs: float = 1.0,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    reset: bool = False,
    require_reason: bool = False,
) -> PersonalResult:
    """Train the personal adapter ("backpack") on this device's feedback and save it.

    It is trained on top of ``global_model`` (a directory saved by ``fedrlhf train`` or a
    federation; default: the untrained global model), on the train split that
    :func:`export_for_training` writes, so ``test.jsonl`` stays held out.  Like a federated
    round's personal step it runs without DP: the adapter never leaves the device.
    """
    from safetensors.numpy import load_file, save_file

    from fedrlhf.config import TrainConfig
    from fedrlhf.feedback import read_feedback
    from fedrlhf.io import write_with
    from fedrlhf.models import RewardModel, get_trainable_state, set_trainable_state
    from fedrlhf.training.data import encode_cached
    from fedrlhf.training.session import train_model

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    export = export_for_training(client, seed=seed, require_reason=require_reason)
    if global_model is not None:
        model = RewardModel.from_pretrained(Path(global_model), personal_adapter=True)
    else:
        model = RewardModel.build(client.settings.model_config(), seed=0)  # as the ClientApp's worker_model
    device = client.device
    if device.personal.is_file() and not reset:
        set_trainable_state(model, load_file(str(device.personal)), "personal")
    # the export's train split itself, not DeviceDir.data (which may read the whole store)
    records = read_feedback(client.root / "train.jsonl").records
    if not records:
        raise DataError("no training feedback after the split; record more first")
    data = encode_cached(records, model.tokenizer, model.config.max_length, client.root / "cache")
    model.use_personal(True)
    model.set_trainable("personal")
    result, _ = train_model(model, data, cfg, progress=False, label="personal")
    state = get_trainable_state(model, "personal")
    write_with(device.personal, lambda tmp: save_file(state, str(tmp)))
    return PersonalResult(len(data), result.steps, result.mean_loss, device.personal, export.corrupt)


# --------------------------------------------------------------------------- joining a federation


def check_budget_left(client: ClientDevice) -> Budget:
    """The budget, or :class:`PrivacyBudgetExceeded` when none is left to spend on training."""
    left = budget(client)
    if left.remaining is not None and left.remaining <= 0:
        raise PrivacyBudgetExceeded(
            f"this device has spent its privacy budget ({left.describe()}); it cannot join more "
            "training. Raise lifetime_epsilon in client.json only if you accept the extra risk.",
            spent=left.spent,
            projected=left.spent,
            budget=float(left.lifetime or 0.0),
        )
    return left


def rounds_of(client: ClientDevice, session: str) -> int:
    """How many federated rounds of ``session`` (a ``join`` label) trained on this device's records."""
    with client.store() as store:
        labels = {label for i in store.ids() for label in store.rounds_used(i)}
    return sum(1 for label in labels if label.startswith(f"{session} "))
