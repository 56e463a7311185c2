"""Secrets at rest and payer privacy: AES-256-GCM sealing of APIv3 keys, HMAC payer references."""

from __future__ import annotations

import hmac

from fapiao_runtime.sealing import SealedValueError, SecretsBox

# A sealed value that does not open (wrong FAPIAO_SECRETS_KEY, other merchant's row, tampered bytes).
SealedKeyError = SealedValueError


def _box(secrets: bytes | SecretsBox) -> SecretsBox:
    """The master key, or a box holding it and its predecessors (during a key rotation)."""
    return secrets if isinstance(secrets, SecretsBox) else SecretsBox(secrets)


def seal(secrets: bytes | SecretsBox, plaintext: bytes, *, context: str) -> bytes:
    """AES-256-GCM encrypt `plaintext`; `context` (e.g. the merchant id) is bound as associated data,
    so a sealed value copied onto another merchant's row does not open. Returns nonce || ciphertext."""
    return _box(secrets).seal(plaintext, context.encode())


def unseal(secrets: bytes | SecretsBox, sealed: bytes, *, context: str) -> bytes:
    """Inverse of seal; raises SealedKeyError when the key, context or bytes do not match."""
    return _box(secrets).open(sealed, context.encode())


def payer_ref(payer_hash_key: bytes, openid: str) -> str:
    """HMAC-SHA256(payer_hash_key, openid) as hex; empty when there is no openid.

    Links one payer's payments without publishing the openid; not reversible without the key.
    """
    if not openid:
        return ""
    return hmac.digest(payer_hash_key, openid.encode(), "sha256").hex()
