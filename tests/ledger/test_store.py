"""Integration tests of a validator's store: the pinned number of chains, equivocation evidence, the
signature topic's replay point, what a restart loads."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_stack.devnet import BUYER_TAX_ID, T, issue, reimburse
from fapiao_stack.harness import StackUnderTest
from ledger import reads, store
from ledger.invariants import InvariantViolation

from tests.ledger.support import IDS, unit_validator
from tests.ledger.test_state_machine import ISSUER, REIMBURSER, Feeder, iid, new_chain

pytestmark = pytest.mark.integration

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


async def test_a_second_header_signed_for_a_stored_signature_is_kept_as_evidence(stack: StackUnderTest) -> None:
    """Once a validator's signature of a height is stored, a different one (an old block, or the topic
    read again after a restart: the first is no longer in memory) is an equivocation, kept with its header."""
    pool = await create_pool(stack.database_url, "validator_late_evidence")
    try:
        await apply_migrations(pool, "validator_late_evidence", MIGRATIONS)

        def signed(header: bytes, digest: bytes, validator: str = "validator-2") -> ledger_pb2.BlockSignature:
            sig = ledger_pb2.BlockSignature(
                chain_id=0, height=3, validator_id=validator, header=header, header_hash=digest
            )
            sig.signature.signature = header[:1] * 64
            return sig

        first, second = signed(b"a", b"\x01" * 32), signed(b"b", b"\x02" * 32)
        async with pool.acquire() as conn:
            assert await store.store_signatures(conn, [first]) == []
            assert await store.store_signatures(conn, [first]) == []  # the same one again: no evidence
            # In one write with another validator's signature: only the second header is evidence.
            found = await store.store_signatures(conn, [second, signed(b"b", b"\x02" * 32, "validator-3")])
            assert found == [(0, 3, "validator-2")]
            assert await store.store_signatures(conn, [second]) == []  # kept once
            stored = await conn.fetch("SELECT validator_id, header_hash FROM block_signatures ORDER BY 1")
            evidence = await conn.fetch("SELECT validator_id, header, signature FROM equivocations")
        assert [tuple(r) for r in stored] == [("validator-2", b"\x01" * 32), ("validator-3", b"\x02" * 32)]
        assert [tuple(r) for r in evidence] == [("validator-2", b"b", b"b" * 64)]
    finally:
        await pool.close()


async def test_the_replay_point_is_stored_with_the_signatures(stack: StackUnderTest) -> None:
    pool = await create_pool(stack.database_url, "validator_replay")
    try:
        await apply_migrations(pool, "validator_replay", MIGRATIONS)
        sig = ledger_pb2.BlockSignature(chain_id=0, height=1, validator_id="validator-2", header_hash=b"\x01" * 32)
        sig.signature.signature = b"s" * 64
        async with pool.acquire() as conn:
            assert await store.signature_replay_points(conn) == {}  # a new validator reads from the start
            await store.store_signatures(conn, [sig], replay_from={0: 12, 1: 30})
            await store.store_signatures(conn, [sig], replay_from={0: 15})
            await store.store_signatures(conn, [sig])  # nothing read: the point stays
            assert await store.signature_replay_points(conn) == {0: 15, 1: 30}
    finally:
        await pool.close()


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_first_row_lookups_never_walk_the_primary_key(stack: StackUnderTest, plan_cache_mode: str) -> None:
    """Taking the first row for an invoice number or a transaction id reads that key's index entries,
    not the table in primary-key order (the plan a table not analyzed yet used to get), whatever the plan."""
    schema = "validator_lookups"
    pool = await create_pool(stack.database_url, schema)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO blocks (chain_id, height, header, header_hash, transaction_count, next_offset, final)"
                " SELECT 0, h, '\\x00', '\\x00', 100, h * 100, true FROM generate_series(1, 200) h"
            )
            await conn.execute(
                "INSERT INTO transactions (chain_id, height, idx, transaction_id, invoice_id, kafka_offset,"
                " accepted, claims_id, duplicate, tx_bytes, result_bytes)"
                " SELECT 0, h, i, md5(h::text || ':' || i::text), md5(i::text), h * 100 + i, true, true, false,"
                " '\\x00', '\\x00' FROM generate_series(1, 200) h, generate_series(0, 99) i"
            )
            await conn.execute(
                "INSERT INTO invoice_states (invoice_id, chain_id, invoice_number, issue_transaction_id,"
                " last_transaction_id, state, height)"
                " SELECT md5(n::text), 0, lpad(n::text, 20, '0'), 't', 't', '\\x00', 1 FROM generate_series(1, 20000) n"
            )
            await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
            plans = {}
            for name, sql, key in [
                ("invoice_states_by_number", reads.INVOICE_BY_NUMBER, "00000000000000012345"),
                ("transactions_by_id", store.ORIGINAL_FINAL_RESULT, "c4ca4238a0b923820dcc509a6f75849b"),
            ]:
                statement = await conn.prepare("EXPLAIN (FORMAT JSON) " + sql)
                for _ in range(6):  # past the custom plans PostgreSQL tries before settling on a generic one
                    plan = await statement.fetchval(key)
                plans[name] = plan
        for index, plan in plans.items():
            assert f'"Index Name": "{index}"' in plan, plan
            assert '"Index Name": "invoice_states_pkey"' not in plan, plan
            assert '"Index Name": "transactions_pkey"' not in plan, plan
    finally:
        await pool.close()


class _Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_a_restart_holds_only_the_recent_blocks_and_those_still_owed_work(stack: StackUnderTest) -> None:
    """Per chain the latest recent_heights blocks, plus older ones not final yet (our signature is sent
    again) or whose results this validator publishes and has not marked published."""
    schema = "validator_recent"
    pool = await create_pool(stack.database_url, schema)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)
        # validator-1 publishes chain 0's results, not chain 1's (whose rows it never marks).
        owed = {(0, 3): "unpublished", (1, 4): "not final"}
        rows = [
            (c, h, bytes([c, h]) * 16, owed.get((c, h)) != "not final", c == 1 or (c, h) not in owed)
            for c in (0, 1)
            for h in range(1, 21)
        ]
        async with pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO blocks (chain_id, height, header, header_hash, transaction_count, next_offset, final,"
                " results_published) VALUES ($1, $2, 'h', $3, 1, $2, $4, $5)",
                rows,
            )
            await conn.execute(
                "INSERT INTO block_signatures VALUES (1, 4, $1, $2, $3)", IDS[0], bytes([1, 4]) * 16, b"s" * 64
            )
        producer = _Producer()
        validator = unit_validator(pool, producer, recent_heights=5)
        assert validator.publisher.publishes(0) and not validator.publisher.publishes(1)
        positions = await validator.load([0, 1])
        assert positions == {0: 20, 1: 20}
        finality = validator.finality
        recent = [(c, h) for c in (0, 1) for h in range(16, 21)]
        held = [(c, h) for c in (0, 1) for h in range(1, 21) if finality.header_hash((c, h)) is not None]
        assert sorted(held) == sorted([*recent, *owed])
        assert [key for key in held if finality.is_final(key)] == sorted([*recent, (0, 3)])
        assert {key: finality.votes(key) for key in held if finality.votes(key)} == {
            (1, 4): {IDS[0]: bytes([1, 4]) * 16}
        }
        assert len(producer.sent) == 1  # our signature of the block not final is sent again
        assert finality.is_forgotten((0, 15)) and finality.is_forgotten((1, 15)) and not finality.is_forgotten((0, 3))
        # Of the final blocks, only (0, 3) waits for its results: chain 0's, which validator-1 publishes.
        async with pool.acquire() as conn:
            again = unit_validator(pool, producer, recent_heights=5)
            assert await again.finality.load(conn, {0: 21, 1: 21}, again.publisher.publishes) == [(0, 3)]
    finally:
        await pool.close()


async def test_blocks_are_stored_whole_together_and_never_over_another_header(stack: StackUnderTest) -> None:
    """The blocks of one round (here two heights of a chain that change one invoice twice) are one
    statement; a batch holding a block already stored goes block by block, and one with another
    header for a stored height stores nothing of its batch."""

    feed = Feeder(new_chain())
    feed(issue(ISSUER, iid(1), "26440000000000000001", 10_000, buyer=BUYER_TAX_ID))
    feed.cut(1)  # block 1 also takes effect of the key registrations at the head of the log
    feed(issue(ISSUER, iid(2), "26440000000000000002", 10_000, buyer=BUYER_TAX_ID))
    feed.cut(2)
    feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, iid(2), BUYER_TAX_ID))
    feed.cut(3)
    feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_UNLOCK, iid(2), BUYER_TAX_ID))
    feed.cut(4)
    b1, b2, b3, b4 = feed.blocks
    assert b1.registrations and not b2.registrations

    def own(block: Any) -> ledger_pb2.BlockSignature:
        sig = ledger_pb2.BlockSignature(
            chain_id=block.chain_id, height=block.height, validator_id=IDS[0], header_hash=block.header_hash
        )
        sig.signature.signature = bytes([block.height]) * 64
        return sig

    schema = "validator_blocks"
    pool = await create_pool(stack.database_url, schema)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)

        async def stored() -> tuple[list[tuple[Any, ...]], int, int, list[tuple[Any, ...]]]:
            async with pool.acquire() as conn:
                blocks = [tuple(r) for r in await conn.fetch("SELECT height, header_hash FROM blocks ORDER BY height")]
                txs = await conn.fetchval("SELECT count(*) FROM transactions")
                sigs = await conn.fetchval("SELECT count(*) FROM block_signatures")
                states = [
                    tuple(r)
                    for r in await conn.fetch(
                        "SELECT invoice_id, issue_transaction_id, last_transaction_id, state, height"
                        " FROM invoice_states ORDER BY invoice_id"
                    )
                ]
            return blocks, txs, sigs, states

        await store.commit_blocks(pool, [(b1, own(b1))], IDS[0])
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM submitter_keys") == 2
        await store.commit_blocks(pool, [(b2, own(b2)), (b3, own(b3))], IDS[0])
        blocks, txs, sigs, states = await stored()
        assert blocks == [(h, b.header_hash) for h, b in ((1, b1), (2, b2), (3, b3))]
        assert (txs, sigs) == (3, 3)
        issued_2 = b2.outcomes[0].transaction_id
        # The invoice changed in both blocks: its row holds the later state and the ISSUE's id.
        assert dict((s[0], s[1:]) for s in states)[iid(2)] == (
            issued_2,
            b3.outcomes[0].transaction_id,
            b3.state_bytes[iid(2)],
            3,
        )
        # Stored already (a replay): block by block, nothing changes and nothing is refused.
        await store.commit_blocks(pool, [(b3, own(b3)), (b4, own(b4))], IDS[0])
        blocks, txs, sigs, _ = await stored()
        assert [h for h, _ in blocks] == [1, 2, 3, 4] and (txs, sigs) == (4, 4)
        # Another header for height 4, with a new height 5 behind it: refused, and height 5 not stored.
        other = dataclasses.replace(b4, header_hash=b"\x09" * 32, header_bytes=b"other")
        later = dataclasses.replace(b4, height=5, outcomes=[], transactions=[], results=[], offsets=[], states={})
        before = await stored()
        with pytest.raises(store.HeaderConflict, match="height 4"):
            await store.commit_blocks(pool, [(other, own(other)), (later, own(later))], IDS[0])
        assert await stored() == before
    finally:
        await pool.close()


async def test_a_block_that_does_not_extend_its_chain_is_never_signed(stack: StackUnderTest) -> None:
    """Every block a validator signs and stores extends its chain's stored head: the next height, over
    the hash of the block before. Anything else is a broken invariant, and nothing of it is sent."""
    schema = "validator_heads"
    pool = await create_pool(stack.database_url, schema)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)
        feed = Feeder(new_chain())
        feed(issue(ISSUER, iid(1), "26440000000000000001", 10_000, buyer=BUYER_TAX_ID))
        first = feed.cut(1)
        feed(issue(ISSUER, iid(2), "26440000000000000002", 10_000, buyer=BUYER_TAX_ID))
        second = feed.cut(2)
        forked = new_chain()
        forked.previous_hash = b"\x01" * 32  # height 1 over another head than genesis
        forked_feed = Feeder(forked)
        forked_feed(issue(ISSUER, iid(1), "26440000000000000001", 10_000, buyer=BUYER_TAX_ID))
        fork = forked_feed.cut(1)
        producer = _Producer()
        validator = unit_validator(pool, producer)
        await validator.load([0])
        for block in (second, fork):  # a gap; another previous hash
            with pytest.raises(InvariantViolation, match="does not extend"):
                await validator.coordination.commit([block])
        assert producer.sent == []
        await validator.coordination.commit([first])
        assert len(producer.sent) == 1  # our signature of block 1
        with pytest.raises(InvariantViolation, match="does not extend"):
            await validator.coordination.commit([first])  # the same height again
        await validator.coordination.commit([second])
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT max(height) FROM blocks WHERE chain_id = 0") == 2
    finally:
        await pool.close()
