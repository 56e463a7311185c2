"""Secrets at rest: AES-256-GCM under one 32-byte key from the environment (FAPIAO_SECRETS_KEY).

Every sealed value is bound to what it protects through the associated data (a merchant id, a key id,
an offer id), so a value copied onto another row does not open. Layout: 12-byte random nonce ||
ciphertext+tag. Shared by every service that keeps secrets in PostgreSQL.

Rotation: the new key goes into FAPIAO_SECRETS_KEY and the old one into FAPIAO_SECRETS_KEY_PREVIOUS
(comma-separated, for several). Values are sealed under the new key and open under any of them;
`reseal_column` re-seals a table's values under the new key, after which the old key can be dropped.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Sequence

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
_TAG_BYTES = 16
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
PREVIOUS_KEYS_ENV = "FAPIAO_SECRETS_KEY_PREVIOUS"


class SealedValueError(ValueError):
    """A sealed value does not open: wrong key, wrong associated data, or altered bytes."""


def decode_secret_key(text: str, *, name: str = "FAPIAO_SECRETS_KEY") -> bytes:
    """A 32-byte key written as 64 hex digits or base64 (standard or URL-safe, padding optional).

    Raises ValueError naming the variable `name` otherwise.
    """
    text = text.strip()
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(padded, validate=True) if decode is base64.b64decode else decode(padded)
        except (binascii.Error, ValueError):
            continue
        if len(key) == 32:
            return key
    raise ValueError(f"{name} must be 32 bytes as 64 hex digits or base64")


def decode_previous_keys(text: str) -> list[bytes]:
    """FAPIAO_SECRETS_KEY_PREVIOUS: comma-separated keys in decode_secret_key's formats (may be empty)."""
    return [decode_secret_key(part, name=PREVIOUS_KEYS_ENV) for part in text.split(",") if part.strip()]


def previous_keys_from_env() -> list[bytes]:
    return decode_previous_keys(os.environ.get(PREVIOUS_KEYS_ENV, ""))


class SecretsBox:
    """AES-256-GCM: seals under the current master key, opens under it or a previous one.

    Never logs or exposes a key.
    """

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        if len(key) != 32 or any(len(k) != 32 for k in previous):
            raise ValueError("the secrets key must be 32 bytes")
        self._aead = AESGCM(key)
        self._previous = [AESGCM(k) for k in previous if k != key]

    def __repr__(self) -> str:
        return "SecretsBox(<redacted>)"

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        """Raises SealedValueError when the value was altered, moved, or sealed under another key."""
        if len(sealed) < NONCE_BYTES + _TAG_BYTES:
            raise SealedValueError("sealed value too short")
        for aead in (self._aead, *self._previous):
            try:
                return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
            except InvalidTag:
                continue
        raise SealedValueError("sealed value does not open with the configured secrets keys")


async def reseal_column(
    conn: asyncpg.Connection,
    box: SecretsBox,
    *,
    table: str,
    id_column: str,
    sealed_column: str,
    associated_data: Callable[[object], bytes],
    batch: int = 500,
) -> int:
    """Re-seal every value of `table`.`sealed_column` under the box's current key; returns the count.

    Each batch is one transaction (rows locked while re-sealed); a value that opens under no configured
    key raises SealedValueError and leaves that batch unchanged. Idempotent: run it again at will.
    Table and column names come from the calling service, never from input.
    """
    done = 0
    last: object = None
    while True:
        async with conn.transaction():
            rows = await conn.fetch(
                f"SELECT {id_column} AS id, {sealed_column} AS sealed FROM {table}"
                + ("" if last is None else f" WHERE {id_column} > $2")
                + f" ORDER BY {id_column} LIMIT $1 FOR UPDATE",
                *((batch,) if last is None else (batch, last)),
            )
            if not rows:
                return done
            updates = []
            for row in rows:
                ad = associated_data(row["id"])
                updates.append((row["id"], box.seal(box.open(bytes(row["sealed"]), ad), ad)))
            await conn.executemany(f"UPDATE {table} SET {sealed_column} = $2 WHERE {id_column} = $1", updates)
        done += len(rows)
        last = rows[-1]["id"]
