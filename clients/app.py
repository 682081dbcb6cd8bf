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

from clients.device import EXPORT_FILE as EXPORT_FILE
from clients.device import KEY_FILE as KEY_FILE
from clients.device import MAX_TEXT as MAX_TEXT
from clients.device import NO_LIMIT as NO_LIMIT
from clients.device import SETTINGS_FILE as SETTINGS_FILE
from clients.device import STORE_FILE as STORE_FILE
from clients.device import ClientDevice, ClientSettings, default_device_dir
from clients.privacy_budget import Budget, budget
from clients.records import TrainingExport, export_for_training, forget, record
from clients.training import PersonalResult, check_budget_left, rounds_of, train_personal

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
