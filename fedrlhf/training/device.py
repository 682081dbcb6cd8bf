"""One device's side of a federated round, without Flower.

A client at rest is a directory (ARCHITECTURE.md, "Designed for scale")::

    DIR/train.jsonl     its feedback, or
    DIR/feedback.db + DIR/store.key   the encrypted on-device store (preferred when present;
                        every round that used a record is marked in it)
    DIR/test.jsonl      its own held-out feedback (personal accuracy)
    DIR/meta.json       optional facts for simulations (archetype, attack role)
    DIR/cache/          tokenized tensors, keyed by tokenizer and max length
    DIR/personal.safetensors   the personal adapter ("backpack"); never sent
    DIR/privacy_ledger.json    every DP run on this data, composed
    DIR/client.json     the device's settings, when a person set one up with the client app:
                        its privacy policy (:class:`~fedrlhf.privacy.policy.DevicePrivacyPolicy`)
                        binds every round, whatever the server asks, and a round at another
                        backbone or ``max_length`` than its own is refused
                        (:func:`check_device_settings`)
    DIR/export.json     how the client app made train.jsonl from the store: the store row id of
                        each line and the file's sha256, so that a round that trained on them is
                        noted in ``DIR/shared.jsonl`` for the app to fold into the store

A worker process keeps one :class:`RewardModel` per model config
(:func:`worker_model`) and swaps each client's states in, so N clients cost N
small directories, never N models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from fedrlhf.config import ModelConfig, PrivacyConfig, TrainConfig
from fedrlhf.errors import ConfigError, DataError, ModelError
from fedrlhf.feedback import read_feedback
from fedrlhf.feedback.usage import append_usage
from fedrlhf.io import write_with
from fedrlhf.models.backbone import resolve_backbone
from fedrlhf.models.reward import RewardModel
from fedrlhf.models.state import get_trainable_state, set_trainable_state
from fedrlhf.privacy.ledger import PrivacyLedger
from fedrlhf.privacy.policy import DevicePrivacyPolicy
from fedrlhf.training.data import EncodedFeedback, encode_cached
from fedrlhf.training.evaluate import evaluate
from fedrlhf.training.session import train_model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_device_settings(device: DeviceDir, model_cfg: ModelConfig) -> None:
    """Refuse a round at another backbone or ``max_length`` than the device was set up with.

    ``backbone`` and ``max_length`` in ``client.json`` (``fedrlhf-client init --backbone
    --max-length``) are which encoder this device runs and how much of each text it
    processes; its personal adapter is trained on them.  A server may not change either
    silently (another backbone is another download's worth of trust, a longer length costs
    memory and time).  Backbones compare after aliases resolve (``"minilm"`` is the installed
    MiniLM directory) and local paths compare by their real path.  A directory without
    ``client.json``, or one that does not name a setting, takes the federation's.

    Raises:
        ConfigError: naming both values and the file.
    """
    check_max_length(device, model_cfg.max_length, "model.max_length")
    own = _client_settings(device).get("backbone")
    if own is not None and not _same_backbone(str(own), model_cfg.backbone):
        path = device.root / "client.json"
        raise ConfigError(
            f"backbone mismatch: this device was set up with backbone {own!r}, the federation's "
            f"model.backbone is {model_cfg.backbone!r}; it runs only its own backbone (to accept "
            f"the federation's, set backbone in {path})"
        )


def _client_settings(device: DeviceDir) -> dict[str, Any]:
    """``client.json`` as a dict; empty when the device has none (a simulated device)."""
    path = device.root / "client.json"
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable client settings: {exc}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path} is not readable client settings: a JSON object is expected")
    return settings


def _same_backbone(a: str, b: str) -> bool:
    """Whether two ``model.backbone`` values name the same model: equal, or the same installed
    directory once aliases resolve (an alias whose package is missing compares by name)."""
    if a == b:
        return True
    try:
        a, b = resolve_backbone(a), resolve_backbone(b)
    except ModelError:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def check_max_length(device: DeviceDir, max_length: int, key: str) -> None:
    """:func:`check_device_settings` for a length the federation sets under ``key`` (e.g.
    ``policy.max_length`` for a policy round)."""
    own = _client_settings(device).get("max_length")
    if own is not None and own != max_length:
        path = device.root / "client.json"
        raise ConfigError(
            f"max_length mismatch: this device was set up with max_length {own}, the federation's "
            f"{key} is {max_length}; it trains only at its own length (to accept "
            f"{max_length}, set max_length in {path})"
        )


def bind_privacy(
    device: DeviceDir, privacy: PrivacyConfig
) -> tuple[PrivacyConfig, DevicePrivacyPolicy | None]:
    """The privacy a round runs with: the server's ``privacy``, or, on a device with a policy
    (``client.json``), the policy's delta, accountant and lifetime budget over what its ledger
    has spent (:meth:`DevicePrivacyPolicy.bind`); and that policy.

    Raises:
        PrivacyPolicyError: the server asks for a non-private round on a device with a budget.
        PrivacyBudgetExceeded: the device's budget is spent.
    """
    policy = device.privacy_policy()
    if policy is None:
        return privacy, None
    spent = PrivacyLedger.open(
        device.ledger, lifetime_epsilon=None, accountant=policy.accountant, delta=policy.delta
    ).spent()
    return policy.bind(privacy, spent=spent), policy


def record_non_private(device: DeviceDir, policy: DevicePrivacyPolicy, *, steps: int, round_: int) -> None:
    """A non-private round on a device with a policy (allowed only without a limit) goes into
    its ledger as what it is: noise 0, epsilon = inf."""
    PrivacyLedger(
        device.ledger, accountant=policy.accountant, delta=policy.delta, lifetime_epsilon=None
    ).record(noise_multiplier=0.0, sample_rate=1.0, steps=max(1, steps), label=f"round-{round_}")


def settle_round(
    device: DeviceDir,
    policy: DevicePrivacyPolicy | None,
    *,
    spec: RoundSpec,
    result: Any,
    privacy_report: dict[str, Any] | None,
    before: dict[str, np.ndarray],
    after: dict[str, np.ndarray],
    used_ids: list[int],
    units: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """What every task does once its local training ran: the ledger entry of a non-private round
    on a device with a policy, the update (``after - before``), the records marked as used, and
    the round's metrics."""
    if policy is not None and privacy_report is None:  # allowed only without a limit: epsilon = inf
        record_non_private(device, policy, steps=result.steps, round_=spec.round)
    delta = {name: after[name] - before[name] for name in after}
    device.mark_used(used_ids, f"round-{spec.round}")
    metrics = {"num-examples": float(units), "train_loss": result.mean_loss, "steps": float(result.steps)}
    if privacy_report is not None:
        metrics["epsilon"] = float(privacy_report["epsilon"])
    return delta, metrics


@lru_cache(maxsize=2)
def worker_model(config: ModelConfig) -> tuple[RewardModel, dict[str, np.ndarray]]:
    """The process-wide model for ``config`` and its initial personal state (loaded once)."""
    model = RewardModel.build(config, seed=0)
    personal0 = get_trainable_state(model, "personal") if config.personal_adapter else {}
    return model, personal0


@dataclasses.dataclass(frozen=True)
class DeviceDir:
    """Paths of one client at rest."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "privacy_ledger.json"

    def privacy_policy(self) -> DevicePrivacyPolicy | None:
        """The device's own privacy policy (``client.json``); ``None`` for a simulated device."""
        return DevicePrivacyPolicy.load(self.root)

    @property
    def personal(self) -> Path:
        return self.root / "personal.safetensors"

    def meta(self) -> dict[str, Any]:
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def store(self) -> Path:
        return self.root / "feedback.db"

    def records(self, split: str) -> tuple[list, list[int]]:
        """``split``'s records and, when they come from the encrypted store, their row ids.

        An exported ``train.jsonl`` (the client app writes it, quality-filtered, with
        ``test.jsonl`` held out) wins, with the row ids ``export.json`` lists for exactly that
        file (none for a file it does not describe); without one, a device trains on its
        store directly.
        """
        path = self.root / f"{split}.jsonl"
        if path.is_file():
            if not (self.root / "export.json").is_file():  # not the client app's export (a simulation's)
                return read_feedback(path).records, []
            before = _sha256(path)
            records = read_feedback(path).records
            unchanged = before == _sha256(path)  # not replaced by a new export while it was read
            ids = self._exported_ids(split, before) if unchanged else []
            return records, ids if len(ids) == len(records) else []
        initialised = (self.root / "client.json").is_file()  # the client app made a store here
        if split == "train" and (self.store.is_file() or initialised):
            from fedrlhf.feedback.store import FeedbackStore

            # create=False: a store that vanished or was emptied is a StoreMissing error naming it
            with FeedbackStore.open(self.store, key_file=self.root / "store.key", create=False) as store:
                items = store.training_records()  # forgotten feedback is gone from here
            return [i.record for i in items], [i.id for i in items]
        return [], []

    def export_info(self) -> dict[str, Any]:
        """``export.json`` as the client app wrote it (``{}`` when there is none or it is unreadable)."""
        try:
            data = json.loads((self.root / "export.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _exported_ids(self, split: str, sha256: str) -> list[int]:
        """Store row ids of ``split.jsonl``'s lines, if ``export.json`` describes this very file."""
        made = self.export_info()
        ids = made.get(f"{split}_ids")
        if made.get(f"{split}_sha256") != sha256 or not isinstance(ids, list):
            return []
        return [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]

    def mark_used(self, ids: list[int], round_id: str) -> None:
        """Note that these store rows trained ``round_id`` (the app can tell the user which).

        Rows read from the store are marked in it directly.  Rows of the client app's export
        are appended to ``shared.jsonl`` instead (the ClientApp needs no store key for that),
        labelled with the export's ``session`` (``join:HOST:PORT:TIME``); the client app folds
        them into the store when it next opens it (:func:`take_usage`).
        """
        if not ids:
            return
        if (self.root / "train.jsonl").is_file():
            session = self.export_info().get("session")
            append_usage(self.root, f"{session} {round_id}" if isinstance(session, str) else round_id, ids)
            return
        from fedrlhf.feedback.store import FeedbackStore

        with FeedbackStore.open(self.store, key_file=self.root / "store.key", create=False) as store:
            store.mark_used(ids, round_id)

    def data(self, split: str, model: RewardModel) -> EncodedFeedback | None:
        """Tokenized ``split`` ("train" / "test"), cached; None when there is none."""
        records, _ = self.records(split)
        if not records:
            return None
        return encode_cached(records, model.tokenizer, model.config.max_length, self.root / "cache")


@dataclasses.dataclass(frozen=True)
class RoundSpec:
    """What the server asks of a client this round."""

    round: int
    seed: int
    local_epochs: float
    personal: bool = False
    personal_epochs: float = 1.0
    evaluate: bool = True
    rounds: int = 0  # the federation's planned rounds (0: unknown); a target epsilon spans them


def _load_personal(model: RewardModel, device: DeviceDir, initial: dict[str, np.ndarray]) -> None:
    state = load_file(str(device.personal)) if device.personal.is_file() else initial
    set_trainable_state(model, state, "personal")


def client_round(
    device: DeviceDir,
    global_state: dict[str, np.ndarray],
    spec: RoundSpec,
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    privacy: PrivacyConfig,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train on the device's data from ``global_state``; return (update delta, metrics).

    The delta covers the global part only (LoRA + head).  With ``spec.personal``
    the personal adapter is then trained on top of the received global model and
    saved in the device directory; it never appears in what is returned.

    A device with a policy (``client.json``) trains with its own delta, accountant and
    lifetime budget whatever ``privacy`` asks (:meth:`DevicePrivacyPolicy.bind`), and
    refuses before any work a round that breaks them.

    Raises:
        ConfigError: the round's ``model.max_length`` is not the device's (:func:`check_device_settings`).
        PrivacyPolicyError: the server asks for a non-private round on a device with a budget.
        PrivacyBudgetExceeded: the round would take the device over its lifetime budget.
    """
    start = time.perf_counter()
    check_device_settings(device, model_cfg)
    privacy, policy = bind_privacy(device, privacy)
    model, personal0 = worker_model(model_cfg)
    train = device.data("train", model)
    _, used_ids = device.records("train")
    if train is None or len(train) == 0:
        raise DataError("the device has no training feedback", path=str(device.root / "train.jsonl"))
    set_trainable_state(model, global_state)
    metrics: dict[str, float] = {}
    test = device.data("test", model) if spec.evaluate else None
    if test is not None and test.num_pairs:
        model.use_personal(False)
        metrics["global_accuracy"] = evaluate(model, test).accuracy  # the received model, before training
    cfg = dataclasses.replace(train_cfg, epochs=spec.local_epochs, seed=spec.seed)
    model.set_trainable("global")
    model.use_personal(False)
    torch.manual_seed(spec.seed)
    result, privacy_report = train_model(
        model,
        train,
        cfg,
        privacy=privacy,
        ledger_path=device.ledger,
        progress=False,
        label=f"round-{spec.round}",
        runs=max(1, spec.rounds - spec.round + 1),  # this round and the ones left share the target
    )
    delta, settled = settle_round(
        device,
        policy,
        spec=spec,
        result=result,
        privacy_report=privacy_report,
        before=global_state,
        after=get_trainable_state(model),
        used_ids=used_ids,
        units=len(train),
    )
    metrics.update(settled)
    if spec.personal and model_cfg.personal_adapter:
        metrics.update(_personal_round(model, device, global_state, train, test, personal0, cfg, spec))
    metrics["seconds"] = time.perf_counter() - start
    return delta, metrics


def _personal_round(
    model: RewardModel,
    device: DeviceDir,
    global_state: dict[str, np.ndarray],
    train: EncodedFeedback,
    test: EncodedFeedback | None,
    personal0: dict[str, np.ndarray],
    cfg: TrainConfig,
    spec: RoundSpec,
) -> dict[str, float]:
    """Train the personal adapter on top of the received global model; it stays on the device.

    It is trained without DP: neither it nor anything derived from it leaves the device.
    """
    set_trainable_state(model, global_state)
    _load_personal(model, device, personal0)
    model.use_personal(True)
    model.set_trainable("personal")
    from fedrlhf.training.local import train as plain_train

    plain_train(model, train, dataclasses.replace(cfg, epochs=spec.personal_epochs), progress=False)
    state = get_trainable_state(model, "personal")
    write_with(device.personal, lambda tmp: save_file(state, str(tmp)))
    out = {}
    if test is not None and test.num_pairs:
        out["personal_accuracy"] = evaluate(model, test).accuracy
    model.use_personal(False)
    model.set_trainable("global")
    return out


def client_evaluate(
    device: DeviceDir, global_state: dict[str, np.ndarray], *, model_cfg: ModelConfig
) -> dict[str, float]:
    """Global (and, if the device has one, personal) accuracy on the device's own test data."""
    check_device_settings(device, model_cfg)
    model, _ = worker_model(model_cfg)
    test = device.data("test", model)
    if test is None or not test.num_pairs:
        return {"num-examples": 0.0}  # nothing held out on this device: no accuracy to report
    set_trainable_state(model, global_state)
    model.use_personal(False)
    out = {"global_accuracy": evaluate(model, test).accuracy, "num-examples": float(test.num_pairs)}
    if model_cfg.personal_adapter and device.personal.is_file():
        _load_personal(model, device, {})
        model.use_personal(True)
        out["personal_accuracy"] = evaluate(model, test).accuracy
        model.use_personal(False)
    return out
