"""The on-device client: one directory holds everything a user's device keeps.

::

    DIR/client.json          settings: backbone, max_length, the device's privacy budget, key kind
    DIR/feedback.db          the encrypted feedback store (:class:`~fedrlhf.feedback.store.FeedbackStore`),
                             also holding the responses waiting to be judged in the web page (clients.web)
    DIR/store.key            its 32-byte key (0600), unless the store is protected by a passphrase
    DIR/train.jsonl, test.jsonl    scrubbed, quality-filtered export that the Flower ClientApp reads
    DIR/export.json          how that export was made (re-made after every ``forget``): its settings,
                             the store row id of every line, the files' sha256 and the join session
    DIR/shared.jsonl         rounds that trained on the export, until the store notes them
                             (:mod:`fedrlhf.feedback.usage`; folded whenever the store is opened)
    DIR/supernode_key(.pub)  the device's SuperNode key pair (``keygen``; :mod:`clients.supernode`)
    DIR/personal.safetensors, privacy_ledger.json, cache/   as in :class:`~fedrlhf.training.device.DeviceDir`

Everything here uses fedrlhf's public API only.  Training and the privacy ledger
import torch and Opacus, so they are imported where used: recording feedback stays fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrlhf.config import ModelConfig, PrivacyConfig
from fedrlhf.errors import ConfigError, DataError, PrivacyBudgetExceeded, StoreError
from fedrlhf.feedback import Feedback, Preference, split_records, write_jsonl
from fedrlhf.feedback.pii import scrub
from fedrlhf.feedback.quality import JudgeContext, RuleConfig, RuleJudge, filter_feedback
from fedrlhf.feedback.store import FeedbackStore, StoredFeedback, StoreMissing
from fedrlhf.feedback.usage import take_usage
from fedrlhf.io import atomic_write_json

if TYPE_CHECKING:
    from fedrlhf.training.device import DeviceDir

__all__ = [
    "Budget",
    "ClientDevice",
    "ClientSettings",
    "PersonalResult",
    "TrainingExport",
    "budget",
    "check_budget_left",
    "default_device_dir",
    "export_for_training",
    "forget",
    "record",
    "rounds_of",
    "train_personal",
]

SETTINGS_FILE, STORE_FILE, KEY_FILE = "client.json", "feedback.db", "store.key"
NO_LIMIT = "none"  # client.json's explicit "no privacy limit" (same word as fedrlhf.privacy.policy.NO_LIMIT)
EXPORT_FILE = "export.json"
MAX_TEXT = 20_000  # characters per prompt/response/reason: feedback, not documents


def default_device_dir() -> Path:
    """``$FEDRLHF_DEVICE``, else the one ``device-<id>`` client in ``$FEDRLHF_HOME`` (``~/.fedrlhf``).

    With none there yet, a new path with a random id: the directory's name is the device id
    a federation sees, so it must be unique across devices and stable (and say nothing else).
    """
    if os.environ.get("FEDRLHF_DEVICE"):
        return Path(os.environ["FEDRLHF_DEVICE"])
    home = Path(os.environ.get("FEDRLHF_HOME", Path.home() / ".fedrlhf"))
    found = sorted(p for p in home.glob("device-*") if (p / SETTINGS_FILE).is_file())
    if len(found) > 1:
        raise ConfigError(
            f"{home} holds {len(found)} clients ({', '.join(p.name for p in found)}): "
            "choose one with --device"
        )
    return found[0] if found else home / f"device-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class ClientSettings:
    """What a device fixes once, at ``init``.

    Attributes:
        backbone: reward-model backbone (HF id, local path, or ``"minilm"``); must match the federation's.
        max_length: tokens per prompt + response; a federated round asking for another
            ``model.max_length`` is refused (:func:`fedrlhf.training.device.check_device_settings`).
            The default is the federation app's (``model.max_length`` in pyproject.toml).
        lifetime_epsilon: the privacy budget the user allows this device (epsilon at ``delta``),
            binding every federated round (:class:`fedrlhf.privacy.DevicePrivacyPolicy`);
            ``0``: nothing may be spent; ``None``: no limit, stored as ``"none"`` in client.json.
        delta: delta of the epsilons shown (a ledger written with another delta shows its own).
        accountant: ``"rdp"`` or ``"prv"``.
        key: ``"keyfile"`` (``DIR/store.key`` or a given file) or ``"passphrase"``.
    """

    backbone: str = "minilm"
    max_length: int = 64
    lifetime_epsilon: float | None = 8.0
    delta: float = 1e-5
    accountant: str = "rdp"
    key: str = "keyfile"

    def __post_init__(self) -> None:
        ModelConfig(backbone=self.backbone, max_length=self.max_length)  # validates both
        PrivacyConfig(delta=self.delta, accountant=self.accountant)
        life = self.lifetime_epsilon
        number = isinstance(life, (int, float)) and not isinstance(life, bool)
        if life is not None and not (number and math.isfinite(life) and life >= 0):
            raise ConfigError(
                f"lifetime_epsilon must be a number >= 0 (0: nothing may be spent) or None, got {life!r}"
            )
        if self.key not in ("keyfile", "passphrase"):
            raise ConfigError(f"key must be 'keyfile' or 'passphrase', got {self.key!r}")

    def to_json(self) -> dict[str, Any]:
        """The client.json contents ("no limit" is the explicit word ``"none"``, never null)."""
        data = dataclasses.asdict(self)
        data["lifetime_epsilon"] = NO_LIMIT if self.lifetime_epsilon is None else self.lifetime_epsilon
        return data

    @classmethod
    def from_json(cls, data: Any) -> ClientSettings:
        """Settings from client.json; ``lifetime_epsilon`` null (older versions: 0 or no limit) is refused."""
        if not isinstance(data, dict):
            raise ConfigError("client settings must be a JSON object")
        life = data.get("lifetime_epsilon", cls.lifetime_epsilon)
        if isinstance(life, str) and life.strip().lower() == NO_LIMIT:
            return cls(**{**data, "lifetime_epsilon": None})
        if life is None:
            raise ConfigError(
                "lifetime_epsilon is null, which older versions wrote both for 0 and for no limit: set it "
                'to a number (0: nothing may be spent) or to "none" (no limit)'
            )
        return cls(**data)

    def model_config(self) -> ModelConfig:
        """The reward model this device trains (with its personal adapter)."""
        return ModelConfig(backbone=self.backbone, max_length=self.max_length, personal_adapter=True)


@dataclass(frozen=True)
class ClientDevice:
    """An initialised client directory and the secret that opens its store."""

    root: Path
    settings: ClientSettings
    passphrase: str | None = dataclasses.field(default=None, repr=False)
    key_file: Path | None = None

    @classmethod
    def init(
        cls,
        root: str | os.PathLike[str],
        settings: ClientSettings | None = None,
        *,
        passphrase: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
        force: bool = False,
    ) -> ClientDevice:
        """Create ``root`` (0700), its settings, key file and empty store; an existing client is opened.

        An existing client's store must be there; ``force`` makes a new, empty one if it has vanished.
        """
        root = Path(root).expanduser().absolute()
        kind = "passphrase" if passphrase is not None else "keyfile"
        settings = dataclasses.replace(settings or ClientSettings(), key=kind)
        if (root / SETTINGS_FILE).is_file():
            existing = cls.open(root, passphrase=passphrase, key_file=key_file)
            if existing.settings != settings:
                raise ConfigError(
                    f"{root} is already a client with other settings ({existing.settings}); "
                    "use another --device or edit its client.json"
                )
            with existing.store(create=force):
                pass
            return existing
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = None if passphrase is not None else Path(key_file or root / KEY_FILE)
        if key is not None and not key.exists():
            FeedbackStore.create_key_file(key)
        device = cls(root, settings, passphrase, key)
        with device.store(create=True):
            pass
        atomic_write_json(root / SETTINGS_FILE, settings.to_json())
        return device

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        passphrase: str | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> ClientDevice:
        """Open an initialised client directory (the store itself is opened per operation)."""
        root = Path(root).expanduser().absolute()
        path = root / SETTINGS_FILE
        if not path.is_file():
            raise ConfigError(f"no client at {root}: run 'fedrlhf-client init' first (same --device)")
        try:
            settings = ClientSettings.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not valid client settings: {exc}") from None
        if settings.key == "passphrase" and passphrase is None:
            raise ConfigError("this client's store is protected by a passphrase: pass --passphrase-env VAR")
        if settings.key == "keyfile" and passphrase is not None:
            raise ConfigError("this client's store is protected by a key file, not a passphrase")
        key = None if passphrase is not None else Path(key_file or root / KEY_FILE)
        return cls(root, settings, passphrase, key)

    @property
    def device(self) -> DeviceDir:
        """The directory as the Flower ClientApp sees it."""
        from fedrlhf.training.device import DeviceDir  # imports torch: only when training

        return DeviceDir(self.root)

    @contextmanager
    def store(self, *, create: bool = False, scrub: bool = True) -> Iterator[FeedbackStore]:
        """The encrypted store, opened for one operation (SQLite connections stay in one thread).

        Only ``init`` creates it (``create``): a client whose store vanished or was emptied is refused.
        ``scrub=False`` is for records whose texts were scrubbed already (outside a lock).
        Rounds a ClientApp noted in ``shared.jsonl`` are moved into the store first.
        """
        path = self.root / STORE_FILE
        try:
            opened = FeedbackStore.open(
                path, passphrase=self.passphrase, key_file=self.key_file, create=create, scrub=scrub
            )
        except StoreMissing:
            raise StoreError(
                f"{path} has vanished or is empty; restore it from a backup, or run "
                "'fedrlhf-client init --force' to start again with an empty store"
            ) from None
        with opened as store:
            take_usage(self.root, lambda label, ids: _note_usage(store, label, ids))
            yield store


def _note_usage(store: FeedbackStore, label: str, ids: list[int]) -> None:
    """Note a round in the store for the rows still there (forgotten ones are gone, with their text)."""
    live = set(store.ids())
    kept = [i for i in ids if i in live]
    if kept:
        store.mark_used(kept, label)


# --------------------------------------------------------------------------- recording and forgetting


def _check_length(record: Feedback) -> None:
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise DataError(f"is {len(value)} characters long; the limit is {MAX_TEXT}", field=f.name)


def record(client: ClientDevice, item: Feedback) -> int:
    """Scrub, encrypt and store one piece of feedback; returns its id."""
    _check_length(item)
    if isinstance(item, Preference) and item.chosen == item.rejected:
        raise DataError(
            "is identical to 'chosen'; an A/B choice needs two different responses", field="rejected"
        )
    with client.store() as store:
        return store.add(item)


def forget(
    client: ClientDevice, *, ids: Sequence[int] = (), since: datetime | None = None, everything: bool = False
) -> int:
    """Delete records (by id, since a time, or all) and every copy made of them on this device.

    The training export is re-made without them and tokenized caches are removed.
    Returns how many records were deleted; an unknown id is a :class:`DataError`.
    """
    with client.store() as store:
        live = set(store.ids()) if ids else set()  # corrupt rows too: forget needs no decryption
        missing = [i for i in ids if i not in live]
        if missing:
            raise DataError(f"no feedback records with ids {missing} (see 'fedrlhf-client list')")
        if everything:
            removed = store.forget_all()
        elif since is not None:
            removed = store.forget_since(since)
        else:
            removed = sum(store.forget(i) for i in ids)
    for cached in (client.root / "cache").glob("tokens-*"):
        cached.unlink(missing_ok=True)
    if (client.root / EXPORT_FILE).is_file() or (client.root / "train.jsonl").is_file():
        export_for_training(client, **_last_export(client), allow_empty=True)
    return removed


def _last_export(client: ClientDevice) -> dict[str, Any]:
    """The settings of the last training export (defaults if unknown)."""
    made: dict[str, Any] = {"test_fraction": 0.2, "seed": 0, "require_reason": False, "session": None}
    try:
        saved = json.loads((client.root / EXPORT_FILE).read_text(encoding="utf-8"))
        made.update({k: saved[k] for k in made if k in saved})
    except (OSError, ValueError, TypeError):
        pass
    return made


# --------------------------------------------------------------------------- training export


@dataclass(frozen=True)
class TrainingExport:
    """What :func:`export_for_training` wrote: record ids per split, dropped ``(id, why)``, corrupt ids."""

    train_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    dropped: tuple[tuple[int, str], ...]
    corrupt: tuple[int | str, ...] = ()  # rows that failed authentication, left out


def _rescrub(item: StoredFeedback) -> Feedback | str:
    """The record with every text field scrubbed again, or why it cannot train."""
    fields = {f.name: getattr(item.record, f.name) for f in dataclasses.fields(item.record)}
    changes = {k: scrub(v) for k, v in fields.items() if isinstance(v, str)}
    try:
        clean: Feedback = dataclasses.replace(item.record, **changes)  # type: ignore[arg-type]
    except DataError:
        return "only personal data differs between the responses"
    if isinstance(clean, Preference) and clean.chosen == clean.rejected:
        return "both responses are identical"
    return clean


def export_for_training(
    client: ClientDevice,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    require_reason: bool = False,
    allow_empty: bool = False,
    session: str | None = None,
) -> TrainingExport:
    """Write live, quality-filtered, scrubbed records to ``train.jsonl`` / ``test.jsonl`` (atomic, 0600).

    ``export.json`` records how, the store row id of every line (so that a federated round notes
    in the store which records it trained on) and ``join``'s ``session`` label (by default the
    last export's: re-exports by ``forget`` or ``train-personal`` keep a running session's).

    Raises:
        DataError: nothing is left to train on (unless ``allow_empty``).
    """
    with client.store() as store:
        items = store.training_records()
    result = filter_feedback(items, [RuleJudge(RuleConfig(require_reason=require_reason))], JudgeContext())
    dropped = [(d.item.id, d.reason) for d in result.dropped if isinstance(d.item, StoredFeedback)]
    usable: list[tuple[int, Feedback]] = []
    for item in (i for i in result.kept if isinstance(i, StoredFeedback)):  # all are; narrows the type
        clean = _rescrub(item)
        if isinstance(clean, str):
            dropped.append((item.id, clean))
        else:
            usable.append((item.id, clean))
    if not usable and not allow_empty:
        raise DataError("no feedback left to train on after the quality filter; record some first")
    train, test = split_records(usable, test_fraction=test_fraction, seed=seed)
    made: dict[str, Any] = {
        "test_fraction": test_fraction,
        "seed": seed,
        "require_reason": require_reason,
        "session": session if session is not None else _last_export(client)["session"],
    }
    for name, part in (("train", train), ("test", test)):
        path = write_jsonl(client.root / f"{name}.jsonl", [r for _, r in part])
        made[f"{name}_ids"] = [i for i, _ in part]
        made[f"{name}_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    atomic_write_json(client.root / EXPORT_FILE, made)
    return TrainingExport(
        tuple(i for i, _ in train), tuple(i for i, _ in test), tuple(sorted(dropped)), items.corrupt
    )


# --------------------------------------------------------------------------- privacy budget


@dataclass(frozen=True)
class Budget:
    """The device's privacy spent so far (from its ledger) against its lifetime budget."""

    spent: float
    lifetime: float | None
    remaining: float | None
    delta: float
    accountant: str
    runs: int

    def to_json(self) -> dict[str, Any]:
        """JSON-safe fields (an infinite epsilon, from a run without noise, becomes ``null``)."""

        def finite(x: float | None) -> float | None:
            return None if x is None or math.isinf(x) else x

        return {
            "spent": finite(self.spent),
            "unbounded": math.isinf(self.spent),
            "lifetime": self.lifetime,
            "remaining": finite(self.remaining),
            "delta": self.delta,
            "accountant": self.accountant,
            "runs": self.runs,
        }

    def describe(self) -> str:
        """One line for people, e.g. ``epsilon spent 0.52 of 8 (7.48 left), delta 1e-05, 1 run``."""
        spent = "unbounded (a run without noise)" if math.isinf(self.spent) else f"{self.spent:.3g}"
        of = " (no limit)"
        if self.lifetime is not None:
            of = f" of {self.lifetime:g} ({self.remaining or 0.0:.3g} left)"
        runs = f"{self.runs} training run{'s' if self.runs != 1 else ''}"
        return f"epsilon spent {spent}{of}, delta {self.delta:g}, {runs}"


def budget(client: ClientDevice) -> Budget:
    """Privacy spent by every DP run recorded in ``privacy_ledger.json``, at the ledger's own delta."""
    path, s = client.root / "privacy_ledger.json", client.settings  # DeviceDir.ledger, without torch
    if not path.exists():  # nothing spent; skip importing Opacus (and torch)
        return Budget(0.0, s.lifetime_epsilon, s.lifetime_epsilon, s.delta, s.accountant, 0)
    from fedrlhf.privacy.ledger import PrivacyLedger

    # a federation's ledger shows at the delta it was written with; a corrupt one is a one-line LedgerError
    ledger = PrivacyLedger.open(
        path, lifetime_epsilon=s.lifetime_epsilon, accountant=s.accountant, delta=s.delta
    )
    accountant, delta = ledger.accountant, ledger.delta
    return Budget(
        ledger.spent(), s.lifetime_epsilon, ledger.remaining(), delta, accountant, len(ledger.entries)
    )


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
