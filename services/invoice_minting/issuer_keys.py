"""Per-merchant Ed25519 issuer keys: creation, rotation, sealed storage and ledger registration.

A new key is registered with the ledger (KeyRegistration, role ISSUER, subject = the merchant's tax id,
signed by the registry authority key) through the outbox in the same transaction that stores it. The
outbox publishes in commit order, so the registration reaches every ledger partition before any ISSUE
signed with the key. Rotation retires the active key without revoking it: invoices it signed still verify.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.ledger_client import SigningKey, key_registration_events
from fapiao_runtime.outbox import enqueue

from invoice_minting.secrets_box import SecretsBox

MAX_CACHED_KEYS = 100_000


@dataclass(frozen=True)
class IssuerKeyRow:
    key_id: str
    merchant_id: str
    public_key: bytes
    active: bool
    created_at: dt.datetime
    retired_at: dt.datetime | None


class IssuerKeyStore:
    """Seals, unseals (with a bounded cache of unsealed keys) and registers issuer keys."""

    def __init__(self, box: SecretsBox, authority: SigningKey, ledger_partitions: int, producer: str) -> None:
        self._box = box
        self._authority = authority
        self._partitions = ledger_partitions
        self._producer = producer
        self._unsealed: dict[str, SigningKey] = {}

    def signing_key(self, key_id: str, sealed: bytes) -> SigningKey:
        """The private key `key_id` from its sealed form (cached; key ids are never reused)."""
        key = self._unsealed.get(key_id)
        if key is None:
            raw = self._box.open(sealed, key_id.encode())
            key = SigningKey(key_id, Ed25519PrivateKey.from_private_bytes(raw))
            if len(self._unsealed) >= MAX_CACHED_KEYS:
                self._unsealed.clear()
            self._unsealed[key_id] = key
        return key

    async def create_key(self, conn: asyncpg.Connection, merchant_id: str, tax_id: str) -> str:
        """Retire the merchant's active key (if any), store a new one and enqueue its ledger registration.

        Call inside a transaction that holds the merchant row lock. Returns the new key id.
        """
        key_id = f"issuer-{uuid.uuid4().hex}"
        private = Ed25519PrivateKey.generate()
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        signing = SigningKey(key_id, private)
        await conn.execute(
            "UPDATE issuer_keys SET active = false, retired_at = now() WHERE merchant_id = $1 AND active", merchant_id
        )
        await conn.execute(
            "INSERT INTO issuer_keys (key_id, merchant_id, public_key, private_key_sealed, subject_tax_id, active)"
            " VALUES ($1, $2, $3, $4, $5, true)",
            key_id,
            merchant_id,
            signing.public_raw,
            self._box.seal(raw, key_id.encode()),
            tax_id,
        )
        registration = ledger_pb2.KeyRegistration(
            key_id=key_id,
            public_key=signing.public_raw,
            role=ledger_pb2.SUBMITTER_ROLE_ISSUER,
            subject=tax_id,
            registration_id=str(uuid.uuid4()),
        )
        await enqueue(conn, key_registration_events(self._authority, registration, self._partitions, self._producer))
        self._unsealed[key_id] = signing
        return key_id

    async def list_keys(self, conn: asyncpg.Connection, merchant_id: str) -> list[IssuerKeyRow]:
        rows = await conn.fetch(
            "SELECT key_id, merchant_id, public_key, active, created_at, retired_at FROM issuer_keys"
            " WHERE merchant_id = $1 ORDER BY created_at, key_id",
            merchant_id,
        )
        return [IssuerKeyRow(**dict(r)) for r in rows]

    async def signing_key_for_seller(
        self, conn: asyncpg.Connection, merchant_id: str, seller_tax_id: str
    ) -> SigningKey | None:
        """The key to sign for an invoice whose seller had `seller_tax_id`: the active key if it was registered
        for that tax id, else the newest retired one that was (the ledger accepts a red letter only from a key
        registered for the original invoice's seller, even after the merchant's tax id changed)."""
        row = await conn.fetchrow(
            "SELECT key_id, private_key_sealed FROM issuer_keys WHERE merchant_id = $1 AND subject_tax_id = $2"
            " ORDER BY active DESC, created_at DESC LIMIT 1",
            merchant_id,
            seller_tax_id,
        )
        return None if row is None else self.signing_key(row["key_id"], row["private_key_sealed"])
