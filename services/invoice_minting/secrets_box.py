"""Encryption at rest for private keys and claim tokens: AES-256-GCM under a key from the environment.

Every ciphertext is bound to what it protects through the associated data (for example the key id), so a
ciphertext copied onto another row does not decrypt. Layout: 12-byte random nonce || ciphertext+tag.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

NONCE_BYTES = 12


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
        """Raises ValueError when the ciphertext was altered, moved, or sealed under another key."""
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
        except InvalidTag:
            raise ValueError("ciphertext does not authenticate under the configured secrets key") from None


def parse_key(text: str) -> bytes:
    """A 32-byte key given as 64 hex digits or base64 / base64url. Raises ValueError otherwise."""
    text = text.strip()
    candidates: list[bytes] = []
    try:
        candidates.append(bytes.fromhex(text))
    except ValueError:
        pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            candidates.append(decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            pass
    for candidate in candidates:
        if len(candidate) == 32:
            return candidate
    raise ValueError("FAPIAO_SECRETS_KEY must be 32 bytes as hex or base64")


def load_secrets_key(env_value: str, dev_mode: bool, dev_state_dir: Path) -> bytes:
    """The master key from FAPIAO_SECRETS_KEY; in explicit dev mode only, a generated key kept in a 0600 file.

    Raises RuntimeError when the key is missing outside dev mode: a production service must not invent
    a key it could lose (everything sealed under it would become unreadable).
    """
    if env_value:
        return parse_key(env_value)
    if not dev_mode:
        raise RuntimeError("FAPIAO_SECRETS_KEY is required (set FAPIAO_DEV_MODE=1 for a generated dev key)")
    path = dev_state_dir / "invoice_minting.secrets.key"
    if not path.exists():
        dev_state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex())
        log.warning("dev mode: generated a secrets key file", extra={"path": str(path)})
    return parse_key(path.read_text())
