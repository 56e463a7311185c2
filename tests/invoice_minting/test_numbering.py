"""Invoice numbers against the real database: a rolled-back claim leaves no gap."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.ledger_client import SigningKey
from fapiao_stack.harness import StackUnderTest
from invoice_minting.claims import ClaimCommand, mint_claims, token_hash
from invoice_minting.deps import MintingDeps
from invoice_minting.events import create_offer, on_merchant_event
from invoice_minting.issuer_keys import IssuerKeyStore
from invoice_minting.secrets_box import SecretsBox
from invoice_minting.settings import MintingSettings

from tests.invoice_minting.support import uscc

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parents[2] / "services" / "invoice_minting" / "migrations"


def _deps() -> MintingDeps:
    settings = MintingSettings(
        secrets_key_text="",
        dev_mode=False,
        dev_state_dir=Path("."),
        authority_key_file="",
        authority_key_id="authority-test",
        claim_base_url="https://fapiao.test/claim",
        offer_ttl_s=3600,
        channel="2",
        ledger_partitions=2,
        claim_workers=1,
        claim_batch_max=10,
        claim_queue_max=10,
    )
    box = SecretsBox(os.urandom(32))
    authority = SigningKey("authority-test", Ed25519PrivateKey.generate())
    return MintingDeps(settings=settings, keys=IssuerKeyStore(box, authority, 2, "test"), box=box)


async def test_rolled_back_claim_returns_its_number(stack: StackUnderTest) -> None:
    deps = _deps()
    pool = await create_pool(stack.database_url, "invoice_minting")
    try:
        await apply_migrations(pool, "invoice_minting", MIGRATIONS)
        merchant = payments_pb2.MerchantRegistered(
            merchant_id="m1",
            legal_name="卖方",
            tax_id=uscc(1),
            region_code="44",
            default_tax_classification_code="1",
            default_item_name="服务",
            default_tax_rate_bp=600,
        )
        async with pool.acquire() as conn, conn.transaction():
            await on_merchant_event(conn, make_envelope(merchant, aggregate_id="m1", producer="t"), deps)
            tokens = [
                await create_offer(conn, payments_pb2.Payment(payment_id=p, merchant_id="m1", amount_fen=100), deps)
                for p in ("p1", "p2")
            ]
        buyer = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三")
        now = dt.datetime.now(dt.UTC)
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            [first] = await mint_claims(conn, deps, [ClaimCommand(token_hash(tokens[0] or ""), buyer, "k")], now)
            await transaction.rollback()
            assert isinstance(first, invoice_pb2.Invoice)
            assert first.body.invoice_number.endswith("000000000000001")
            async with conn.transaction():
                outcomes = await mint_claims(
                    conn,
                    deps,
                    [ClaimCommand(token_hash(t or ""), buyer, "k") for t in reversed(tokens)],
                    now,
                )
            numbers = [o.body.invoice_number for o in outcomes if isinstance(o, invoice_pb2.Invoice)]
            # The rolled-back number 1 is reused: no gap.
            assert sorted(int(n[5:]) for n in numbers) == [1, 2]
            assert await conn.fetchval("SELECT last_sequence FROM invoice_counters") == 2
    finally:
        await pool.close()
