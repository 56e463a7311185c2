"""Per-merchant Ed25519 issuer keys: creation, rotation, sealed storage and ledger registration.

A new key is registered with the ledger (KeyRegistration, role ISSUER, subject = the merchant's tax id,
signed by the registry authority key) through the outbox in the same transaction that stores it. The
outbox publishes in commit order, so the registration reaches every ledger partition before any ISSUE
signed with the key. Rotation retires the active key without revoking it: invoices it signed still verify.
"""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.ledger_client import SigningKey, key_registration_events

from invoice_minting.secrets_box import SecretsBox
from invoice_minting.store import MintingStore

MAX_CACHED_KEYS = 100_000


class IssuerKeys:
    """Creates, seals, unseals (with a bounded cache of unsealed keys) and registers issuer keys; the
    rows themselves are the store's."""

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

    async def create_key(self, store: MintingStore, merchant_id: str, tax_id: str) -> str:
        """Retire the merchant's active key (if any), store a new one and enqueue its ledger registration.

        Call inside a transaction that holds the merchant row lock. Returns the new key id.
        """
        key_id = f"issuer-{uuid.uuid4().hex}"
        private = Ed25519PrivateKey.generate()
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        signing = SigningKey(key_id, private)
        await store.replace_active_issuer_key(
            merchant_id, key_id, signing.public_raw, self._box.seal(raw, key_id.encode()), tax_id
        )
        registration = ledger_pb2.KeyRegistration(
            key_id=key_id,
            public_key=signing.public_raw,
            role=ledger_pb2.SUBMITTER_ROLE_ISSUER,
            subject=tax_id,
            registration_id=str(uuid.uuid4()),
        )
        await store.enqueue(key_registration_events(self._authority, registration, self._partitions, self._producer))
        self._unsealed[key_id] = signing
        return key_id

    async def signing_key_for_seller(
        self, store: MintingStore, merchant_id: str, seller_tax_id: str
    ) -> SigningKey | None:
        """The key to sign for an invoice whose seller had `seller_tax_id`: the active key if it was registered
        for that tax id, else the newest retired one that was (the ledger accepts a red letter only from a key
        registered for the original invoice's seller, even after the merchant's tax id changed)."""
        found = await store.sealed_key_for_seller(merchant_id, seller_tax_id)
        return None if found is None else self.signing_key(*found)
