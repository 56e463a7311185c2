"""The batcher against the real database: concurrent commands share transactions, a bad one fails alone."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from pathlib import Path

import payment_intake
import pytest
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.errors import AlreadyExists
from fapiao_stack.harness import StackUnderTest
from payment_intake.batcher import PaymentBatcher
from payment_intake.domain import RecordPayment

from tests.payment_intake.support import SCHEMA, register

pytestmark = pytest.mark.integration

MIGRATIONS = Path(payment_intake.__file__).parent / "migrations"


def _cmd(merchant_id: str, transaction_id: str, amount_fen: int = 100) -> RecordPayment:
    return RecordPayment(
        merchant_id=merchant_id,
        transaction_id=transaction_id,
        out_trade_no=f"o-{transaction_id}",
        amount_fen=amount_fen,
        payer_total_fen=amount_fen,
        currency="CNY",
        success_time=datetime(2026, 11, 20, tzinfo=UTC),
        payer_ref="",
    )


async def test_a_failing_command_does_not_fail_its_batch_neighbours(stack: StackUnderTest) -> None:
    pool = await create_pool(stack.database_url, SCHEMA, max_size=4)
    await apply_migrations(pool, SCHEMA, MIGRATIONS)
    await register(stack, secrets.token_bytes(32), "m1", b"k" * 32)
    batcher = PaymentBatcher(pool, max_batch=50, workers=1, linger_ms=20)
    stop = asyncio.Event()
    runner = asyncio.ensure_future(batcher.run(stop))
    try:
        # 30 good payments, 1 for a merchant that does not exist (foreign key violation fails the whole
        # batch statement), 1 duplicate and 1 conflicting retry, all submitted together.
        commands = [_cmd("m1", f"t{i}") for i in range(30)]
        commands += [_cmd("ghost", "t-ghost"), _cmd("m1", "t0"), _cmd("m1", "t1", amount_fen=999)]
        results = await asyncio.gather(*(batcher.submit(c) for c in commands), return_exceptions=True)
    finally:
        stop.set()
        await runner
    good = results[:30]
    assert all(not isinstance(r, BaseException) and not r.duplicate for r in good), good
    assert isinstance(results[30], Exception) and not isinstance(results[30], AlreadyExists)
    duplicate, conflict = results[31], results[32]
    assert not isinstance(duplicate, BaseException) and duplicate.duplicate
    assert isinstance(conflict, AlreadyExists) and conflict.reason == "TRANSACTION_CONFLICT"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM payments") == 30
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE topic = 'payments.v1'") == 30
    await pool.close()
