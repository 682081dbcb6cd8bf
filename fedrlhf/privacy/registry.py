"""Which privacy ledger covers a set of records: ledgers found by the records' content.

The unit is the *record* (one preference pair, rating or correction, the unit DP-SGD
protects). A record's key is the SHA-256 of its kind and its fields as canonical JSON
(first 128 bits), so neither the file's name, place, compression, line order nor JSON
formatting changes it; editing any field (a prompt, a response, a reason) makes a new
record. Each ledger ``NAME.json`` in the registry directory has a sidecar
``NAME.records`` listing the keys of every record it covers (one hex key a line).

A run on a set of records uses the one ledger that covers any of them (a copy, a
rename, a reordering, a subset or a superset all hit it) and adds the new records to
that ledger's set: they are charged its whole history, an over-count that is safe.
Records that overlap two ledgers are refused (no one ledger states their privacy);
records that overlap none get a new ledger. Lookups and updates hold one lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from fedrlhf.errors import ConfigError
from fedrlhf.io import atomic_write_bytes
from fedrlhf.privacy import ledger_file

SUFFIX = ".records"
_KEY = re.compile(r"^[0-9a-f]{32}$")


def record_key(record: object) -> str:
    """The content key of one record (dataclass or JSON-able mapping): 32 hex digits."""
    fields = dataclasses.asdict(record) if dataclasses.is_dataclass(record) else record  # type: ignore[arg-type]
    payload = json.dumps(
        [type(record).__name__, fields], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _read_keys(path: Path) -> set[str]:
    try:
        lines = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"record index {path} cannot be read ({exc}); restore it or move it aside"
        ) from None
    bad = next((line for line in lines if not _KEY.match(line)), None)
    if bad is not None:
        raise ConfigError(f"record index {path} is corrupt (line {bad[:40]!r}); restore it or move it aside")
    return set(lines)


def _write_keys(path: Path, keys: set[str]) -> None:
    atomic_write_bytes(path, "".join(k + "\n" for k in sorted(keys)).encode("ascii"))


def ledger_for_records(directory: Path, keys: Iterable[str], *, legacy: Path | None = None) -> Path:
    """The ledger in ``directory`` that covers records with these ``keys`` (made if none does).

    Args:
        directory: the registry (e.g. ``~/.fedrlhf/ledgers``).
        keys: :func:`record_key` of every record the run trains on.
        legacy: a ledger kept before content keys (by file path); adopted for these records
            when it exists and no content-keyed ledger covers them.

    Raises:
        ConfigError: the records overlap two ledgers, or an index is corrupt.
    """
    wanted = set(keys)
    if not wanted:
        raise ConfigError("no records to account privacy for")
    with ledger_file.locked(directory / "registry"):
        hits = []
        for index in sorted(directory.glob("*" + SUFFIX)):
            covered = _read_keys(index)
            if covered & wanted:
                hits.append((index, covered))
        if len(hits) > 1:
            names = ", ".join(str(i.with_suffix(".json")) for i, _ in hits)
            raise ConfigError(
                f"these records overlap {len(hits)} privacy ledgers ({names}), so no one ledger states "
                "their privacy: train on each part separately, or pass --ledger to choose one"
            )
        if hits:
            index, covered = hits[0]
            if not wanted <= covered:
                _write_keys(index, covered | wanted)
            return index.with_suffix(".json")
        if legacy is not None and legacy.is_file() and not legacy.with_suffix(SUFFIX).exists():
            _write_keys(legacy.with_suffix(SUFFIX), wanted)
            return legacy
        name = hashlib.sha256("".join(sorted(wanted)).encode()).hexdigest()[:16]
        _write_keys(directory / f"data-{name}{SUFFIX}", wanted)
        return directory / f"data-{name}.json"
