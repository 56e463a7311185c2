"""Secrets at rest and payer privacy: AES-256-GCM sealing of APIv3 keys, HMAC payer references."""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


class SealedKeyError(Exception):
    """A sealed value could not be opened: wrong FAPIAO_SECRETS_KEY or tampered row."""


def seal(secrets_key: bytes, plaintext: bytes, *, context: str) -> bytes:
    """AES-256-GCM encrypt `plaintext`; `context` (e.g. the merchant id) is bound as associated data,
    so a sealed value copied onto another merchant's row does not open. Returns nonce || ciphertext."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(secrets_key).encrypt(nonce, plaintext, context.encode())


def unseal(secrets_key: bytes, sealed: bytes, *, context: str) -> bytes:
    """Inverse of seal; raises SealedKeyError when the key, context or bytes do not match."""
    if len(sealed) <= _NONCE_BYTES + 16:
        raise SealedKeyError("sealed value too short")
    try:
        return AESGCM(secrets_key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context.encode())
    except InvalidTag:
        raise SealedKeyError("sealed value does not open with this key") from None


def payer_ref(payer_hash_key: bytes, openid: str) -> str:
    """HMAC-SHA256(payer_hash_key, openid) as hex; empty when there is no openid.

    Links one payer's payments without publishing the openid; not reversible without the key.
    """
    if not openid:
        return ""
    return hmac.new(payer_hash_key, openid.encode(), hashlib.sha256).hexdigest()
