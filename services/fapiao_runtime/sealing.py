"""Secrets at rest: AES-256-GCM under one 32-byte key from the environment (FAPIAO_SECRETS_KEY).

Every sealed value is bound to what it protects through the associated data (a merchant id, a key id,
an offer id), so a value copied onto another row does not open. Layout: 12-byte random nonce ||
ciphertext+tag. Shared by every service that keeps secrets in PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
_TAG_BYTES = 16
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class SealedValueError(ValueError):
    """A sealed value does not open: wrong key, wrong associated data, or altered bytes."""


def decode_secret_key(text: str, *, name: str = "FAPIAO_SECRETS_KEY") -> bytes:
    """A 32-byte key written as 64 hex digits or base64 (standard or URL-safe, padding optional).

    Raises ValueError naming the variable `name` otherwise.
    """
    text = text.strip()
    if _HEX_KEY.match(text):
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


class SecretsBox:
    """AES-256-GCM with one master key. Never logs or exposes the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the secrets key must be 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "SecretsBox(<redacted>)"

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        """Raises SealedValueError when the value was altered, moved, or sealed under another key."""
        if len(sealed) < NONCE_BYTES + _TAG_BYTES:
            raise SealedValueError("sealed value too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
        except InvalidTag:
            raise SealedValueError("sealed value does not open with the configured secrets key") from None
