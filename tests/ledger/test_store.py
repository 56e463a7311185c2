"""Integration tests of a validator's store: the pinned number of chains, equivocation evidence."""

from __future__ import annotations

from pathlib import Path

import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_stack.harness import StackUnderTest
from ledger import store

MIGRATIONS = Path(store.__file__).parent / "migrations"


async def test_the_chain_count_never_changes(stack: StackUnderTest) -> None:
    pool = await create_pool(stack.database_url, "validator_pin")
    try:
        await apply_migrations(pool, "validator_pin", MIGRATIONS)
        async with pool.acquire() as conn:
            await store.pin_chain_count(conn, 2)
            await store.pin_chain_count(conn, 2)  # every later start with the same topic
            with pytest.raises(RuntimeError, match="must never change"):
                await store.pin_chain_count(conn, 3)
    finally:
        await pool.close()


async def test_an_equivocation_is_stored_once(stack: StackUnderTest) -> None:
    pool = await create_pool(stack.database_url, "validator_evidence")
    try:
        await apply_migrations(pool, "validator_evidence", MIGRATIONS)
        second = ledger_pb2.BlockSignature(
            chain_id=1, height=7, validator_id="validator-2", header=b"h", header_hash=b"\x02" * 32
        )
        second.signature.signature = b"s" * 64
        async with pool.acquire() as conn:
            await store.record_equivocations(conn, [second])
            await store.record_equivocations(conn, [second])  # the topic re-read after a restart
            rows = await conn.fetch("SELECT chain_id, height, validator_id, header, signature FROM equivocations")
        assert [tuple(r) for r in rows] == [(1, 7, "validator-2", b"h", b"s" * 64)]
    finally:
        await pool.close()
