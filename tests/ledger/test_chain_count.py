"""Integration test: a validator's database pins the number of chains (partitions of ledger.tx.v1)."""

from __future__ import annotations

from pathlib import Path

import pytest
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
