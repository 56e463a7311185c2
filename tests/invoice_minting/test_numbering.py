"""Invoice numbers against the real database: a rolled-back claim leaves no gap."""

from __future__ import annotations

import datetime as dt

import pytest
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.vocabulary import claim_token_hash
from fapiao_stack.harness import StackUnderTest
from invoice_minting.claims import ClaimCommand, mint_claims
from invoice_minting.handlers import create_offer
from invoice_minting.store import MintingStore

from tests.invoice_minting.support import MIGRATIONS, direct_deps, register_direct_merchant

pytestmark = pytest.mark.integration


async def test_rolled_back_claim_returns_its_number(stack: StackUnderTest) -> None:
    deps = direct_deps()
    pool = await create_pool(stack.database_url, "invoice_minting")
    try:
        await apply_migrations(pool, "invoice_minting", MIGRATIONS)
        async with pool.acquire() as conn, conn.transaction():
            await register_direct_merchant(conn, deps, "m1")
            tokens = [
                await create_offer(
                    MintingStore(conn), payments_pb2.Payment(payment_id=p, merchant_id="m1", amount_fen=100), deps
                )
                for p in ("p1", "p2")
            ]
        buyer = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三")
        now = dt.datetime.now(dt.UTC)
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            [first] = await mint_claims(
                MintingStore(conn), deps, [ClaimCommand(claim_token_hash(tokens[0] or ""), buyer, "k")], now
            )
            await transaction.rollback()
            assert isinstance(first, invoice_pb2.Invoice)
            assert first.body.invoice_number.endswith("000000000000001")
            async with conn.transaction():
                outcomes = await mint_claims(
                    MintingStore(conn),
                    deps,
                    [ClaimCommand(claim_token_hash(t or ""), buyer, "k") for t in reversed(tokens)],
                    now,
                )
            numbers = [o.body.invoice_number for o in outcomes if isinstance(o, invoice_pb2.Invoice)]
            # The rolled-back number 1 is reused: no gap.
            assert sorted(int(n[5:]) for n in numbers) == [1, 2]
            assert await conn.fetchval("SELECT last_sequence FROM invoice_counters") == 2
    finally:
        await pool.close()
