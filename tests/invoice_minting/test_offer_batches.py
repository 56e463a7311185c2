"""Payment events fetched together become their offers in one statement, with the one-by-one effect."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.errors import InvalidArgument
from fapiao_stack.harness import StackUnderTest
from invoice_minting.events import on_payment_events
from invoice_minting.handlers import create_offer
from invoice_minting.store import OFFERS_CHANNEL, MintingStore

from tests.invoice_minting.support import MIGRATIONS, direct_deps, register_direct_merchant

pytestmark = pytest.mark.integration


def _succeeded(payment_id: str, amount_fen: int = 500):  # type: ignore[no-untyped-def]
    payment = payments_pb2.Payment(payment_id=payment_id, merchant_id="m1", amount_fen=amount_fen)
    return make_envelope(payments_pb2.PaymentSucceeded(payment=payment), aggregate_id=payment_id, producer="test")


async def test_a_batch_creates_one_offer_per_new_payment_and_announces_each(stack: StackUnderTest) -> None:
    deps = direct_deps()
    pool = await create_pool(stack.database_url, "invoice_minting")
    announced: list[str] = []
    listener = await asyncpg.connect(stack.database_url)
    await listener.add_listener(OFFERS_CHANNEL, lambda *args: announced.append(args[3]))
    try:
        await apply_migrations(pool, "invoice_minting", MIGRATIONS)
        async with pool.acquire() as conn:
            async with conn.transaction():
                await register_direct_merchant(conn, deps, "m1")
                earlier = await create_offer(
                    MintingStore(conn), payments_pb2.Payment(payment_id="p0", merchant_id="m1", amount_fen=500), deps
                )
            before = await conn.fetchrow("SELECT offer_id, token_hash FROM claim_offers WHERE payment_id = 'p0'")
            # p1 twice (a redelivered payment under a new event id) and p0, which already has its offer.
            batch = [_succeeded("p1"), _succeeded("p2", 700), _succeeded("p1"), _succeeded("p0"), _succeeded("p3")]
            async with conn.transaction():
                await on_payment_events(conn, batch, deps)
            rows = await conn.fetch("SELECT payment_id, offer_id, token_hash, amount_fen FROM claim_offers")
        for _ in range(50):
            if len(announced) >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        await listener.close()
        await pool.close()
    assert earlier is not None
    offers = {r["payment_id"]: r for r in rows}
    assert sorted(offers) == ["p0", "p1", "p2", "p3"]
    assert (offers["p0"]["offer_id"], offers["p0"]["token_hash"]) == (before["offer_id"], before["token_hash"])
    assert offers["p2"]["amount_fen"] == 700
    assert len({r["token_hash"] for r in rows}) == 4
    assert sorted(announced) == ["p0", "p1", "p2", "p3"]


async def test_a_bad_payment_fails_the_whole_batch(stack: StackUnderTest) -> None:
    """The consumer then applies the records one by one and dead-letters only the bad one."""
    deps = direct_deps()
    pool = await create_pool(stack.database_url, "invoice_minting")
    try:
        await apply_migrations(pool, "invoice_minting", MIGRATIONS)
        async with pool.acquire() as conn:
            async with conn.transaction():
                await register_direct_merchant(conn, deps, "m1")
            with pytest.raises(InvalidArgument, match="payment amount"):
                async with conn.transaction():
                    await on_payment_events(conn, [_succeeded("p1"), _succeeded("p2", -5)], deps)
            assert await conn.fetchval("SELECT count(*) FROM claim_offers") == 0
    finally:
        await pool.close()
