"""The feedback store's keys: key files, scrypt parameters, the key check, associated data."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedrlhf.errors import StoreError
from fedrlhf.feedback.store_db import SCHEMA_VERSION

KEY_BYTES, NONCE_BYTES = 32, 12
_KEY_CHECK = b"fedrlhf feedback store key check"
_KEY_CHECK_AAD = b"fedrlhf-store:key-check"
_SCRYPT_LIMITS = {"scrypt_n": 2**22, "scrypt_r": 64, "scrypt_p": 16}  # beyond: damaged meta, not a choice


def _aad(row_id: int, kind: str, created_at: str) -> bytes:
    return f"fedrlhf-store:v{SCHEMA_VERSION}:{row_id}:{kind}:{created_at}".encode()


def _pending_aad(item_id: str) -> bytes:
    return f"fedrlhf-store:v{SCHEMA_VERSION}:pending:{item_id}".encode()


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise StoreError(f"cannot read key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"key file {path} is not a regular file")
        if os.name == "posix" and st.st_mode & 0o077:
            raise StoreError(
                f"key file {path} has permissions {stat.S_IMODE(st.st_mode):04o}; it must be readable "
                f"by its owner only: run chmod 600 {path}"
            )
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise StoreError(f"key file {path} must hold exactly {KEY_BYTES} bytes, found {len(key)}")
    return key


def _scrypt_params(meta: dict[str, Any]) -> tuple[bytes, int, int, int]:
    """Salt, n, r, p from ``meta``; ``ValueError`` naming the field when one is missing or absurd."""
    salt = meta.get("salt")
    if not isinstance(salt, bytes) or not 8 <= len(salt) <= 64:
        raise ValueError("salt")
    values = []
    for name, limit in _SCRYPT_LIMITS.items():
        try:
            value = int(meta[name])
        except (KeyError, TypeError, ValueError):
            raise ValueError(name) from None
        if not 1 <= value <= limit or (name == "scrypt_n" and (value < 2 or value & (value - 1))):
            raise ValueError(name)
        values.append(value)
    return salt, values[0], values[1], values[2]


def _key(
    meta: dict[str, Any], passphrase: str | None, key_file: Path | None, path: Path | None = None
) -> bytes:
    """The store key from a passphrase (scrypt with ``meta``'s parameters) or a key file."""
    where = f"{path}: " if path is not None else ""
    kdf = meta.get("kdf")
    if kdf == "scrypt":
        if passphrase is None:
            raise StoreError("this store is protected by a passphrase, not a key file")
        try:
            salt, n, r, p = _scrypt_params(meta)
        except ValueError as exc:
            raise StoreError(
                f"{where}damaged store metadata ({exc} is missing or invalid); restore the file from a backup"
            ) from None
        return Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode())
    if kdf == "keyfile":
        if key_file is None:
            raise StoreError("this store is protected by a key file, not a passphrase")
        return _read_key_file(key_file)
    raise StoreError(f"{where}unknown key derivation {kdf!r} in the store metadata")


def _check_key(aead: AESGCM, blob: object, path: Path) -> None:
    """Decrypt the key check sealed in ``meta``: a wrong key fails here, before any row is read."""
    if not isinstance(blob, bytes) or len(blob) <= NONCE_BYTES:
        raise StoreError(f"{path}: damaged store metadata (key_check); restore the file from a backup")
    try:
        aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _KEY_CHECK_AAD)
    except InvalidTag:
        raise StoreError("cannot decrypt the store: wrong key or passphrase") from None
