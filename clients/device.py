"""The client directory itself: its file names, its settings (``client.json``) and its encrypted store.

The layout is described in :mod:`clients.app`, which re-exports everything here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrlhf.config import ModelConfig, PrivacyConfig
from fedrlhf.errors import ConfigError, StoreError
from fedrlhf.feedback.store import FeedbackStore, StoreMissing
from fedrlhf.feedback.usage import take_usage
from fedrlhf.io import atomic_write_json

if TYPE_CHECKING:
    from fedrlhf.training.device import DeviceDir

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
