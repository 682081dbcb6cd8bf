"""Privacy accounting: knows mechanism parameters, never tensors (Opacus's split).

- :mod:`fedrlhf.privacy.ledger`: the per-device lifetime ledger of DP-SGD runs (file format
  in :mod:`fedrlhf.privacy.ledger_file`, composition in :mod:`fedrlhf.privacy.accounting`).
- :mod:`fedrlhf.privacy.policy`: the device's own policy (``client.json``), binding every round.
- :mod:`fedrlhf.privacy.registry`: which ledger covers a set of records (content-keyed).
- :mod:`fedrlhf.privacy.user_level`: DP-FedAvg clipping, noise and accounting at the server.
- :mod:`fedrlhf.privacy.audit`: one-run canary audit (empirical epsilon lower bound).

Epsilon comes from Opacus's accountants; nothing here imports ``flwr``.
"""

from fedrlhf.privacy.audit import AuditResult, best_epsilon_over_k, empirical_epsilon
from fedrlhf.privacy.ledger import LedgerEntry, LedgerError, PrivacyLedger, Reservation
from fedrlhf.privacy.policy import DevicePrivacyPolicy
from fedrlhf.privacy.user_level import (
    UserLevelAccountant,
    add_gaussian_noise,
    clip_update,
    update_clip_norm,
)

__all__ = [
    "AuditResult",
    "DevicePrivacyPolicy",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "Reservation",
    "UserLevelAccountant",
    "add_gaussian_noise",
    "best_epsilon_over_k",
    "clip_update",
    "empirical_epsilon",
    "update_clip_norm",
]
