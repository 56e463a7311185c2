"""Acceptance: agreement of 4 validator processes under load, first-LOCK-wins, crash and recovery."""

from __future__ import annotations

import ast
import asyncio
import json
import random

import asyncpg
import pytest
from fapiao.common.v1 import envelope_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.invoice_ids import chain_of, invoice_id_for_number
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.ledger_client import LedgerResultWaiter, SigningKey
from fapiao_runtime.ledger_trust import format_key_list
from fapiao_stack.devnet import LedgerNetwork, T, cancel, count_final, issue, partial, reimburse, wait_for
from fapiao_stack.harness import ServiceProcess, StackUnderTest, read_envelopes

pytestmark = pytest.mark.integration


def mixed_transactions(net: LedgerNetwork, total: int, seed: int) -> list[ledger_pb2.SignedTransaction]:
    """ISSUEs followed, per invoice, by a random mix of valid and invalid operations."""
    rng = random.Random(seed)
    out: list[ledger_pb2.SignedTransaction] = []
    numbers = [f"2644{seed:04d}{n:012d}" for n in range(total // 4)]
    invoices = [invoice_id_for_number(number) for number in numbers]
    for inv, number in zip(invoices, numbers, strict=True):
        out.append(issue(net.issuer, inv, number, rng.randint(100, 100_000)))
    orgs = [f"9144030000000{i:05d}" for i in range(20)]
    while len(out) < total:
        inv = rng.choice(invoices)
        pick = rng.random()
        if pick < 0.35:
            out.append(reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, inv, rng.choice(orgs)))
        elif pick < 0.55:
            out.append(reimburse(net.reimburser, T.TRANSACTION_TYPE_UNLOCK, inv, rng.choice(orgs)))
        elif pick < 0.75:
            out.append(reimburse(net.reimburser, T.TRANSACTION_TYPE_CLOSE, inv, rng.choice(orgs)))
        elif pick < 0.85:
            out.append(partial(net.issuer, inv, rng.randint(1, 50_000)))
        elif pick < 0.9:
            out.append(cancel(net.issuer, inv))
        elif pick < 0.95:
            out.append(issue(net.issuer, inv, numbers[0]))  # ALREADY_ISSUED, or a number issued elsewhere
        else:
            out.append(reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, f"missing-{rng.randint(0, 99)}", orgs[0]))
    return out


async def chain_snapshot(database_url: str, schema: str) -> tuple[list[tuple[int, int, bytes]], dict[str, bytes]]:
    conn = await asyncpg.connect(database_url)
    try:
        blocks = [
            (r["chain_id"], r["height"], bytes(r["header_hash"]))
            for r in await conn.fetch(f"SELECT chain_id, height, header_hash FROM {schema}.blocks ORDER BY 1, 2")
        ]
        states = {
            r["invoice_id"]: bytes(r["state"])
            for r in await conn.fetch(f"SELECT invoice_id, state FROM {schema}.invoice_states")
        }
        return blocks, states
    finally:
        await conn.close()


async def wait_all_final(net: LedgerNetwork, indexes: list[int], total: int, timeout_s: float) -> None:
    async def done() -> bool:
        counts = [await count_final(net.stack.database_url, net.schema(i)) for i in indexes]
        return all(c >= total for c in counts) or False

    await wait_for(done, timeout_s, interval_s=0.5, what=f"{total} final transactions on validators {indexes}")


async def test_ten_thousand_mixed_transactions_give_identical_chains(stack: StackUnderTest) -> None:
    net = LedgerNetwork(stack)
    await net.start()
    try:
        txs = mixed_transactions(net, 10_000, seed=7)
        await net.submit(txs)
        await wait_all_final(net, [1, 2, 3, 4], len(txs), timeout_s=90)
        snapshots = [await chain_snapshot(stack.database_url, net.schema(i)) for i in range(1, 5)]
        blocks, states = snapshots[0]
        assert {c for c, _, _ in blocks} == {0, 1}, "both partitions are chains"
        assert len(states) == 2_500
        for other_blocks, other_states in snapshots[1:]:
            assert other_blocks == blocks
            assert other_states == states
        # The mix exercised both outcomes (and rejections are recorded in blocks, not dropped).
        conn = await asyncpg.connect(stack.database_url)
        try:
            accepted = await conn.fetchval("SELECT count(*) FROM ledger_1.transactions WHERE accepted")

            # Signatures are written with the finality they complete, the late fourth one once the
            # signature topic is quiet: in the end every validator holds all four for every block.
            async def all_signatures_stored() -> bool:
                for i in range(1, 5):
                    missing = await conn.fetchval(
                        f"SELECT count(*) FROM {net.schema(i)}.blocks b WHERE NOT b.final OR (SELECT count(*)"
                        f" FROM {net.schema(i)}.block_signatures s WHERE s.chain_id = b.chain_id"
                        " AND s.height = b.height AND s.header_hash = b.header_hash) <> 4"
                    )
                    if missing:
                        return False
                return True

            await wait_for(all_signatures_stored, 10, what="four stored signatures of every block")

            # Results are published by f + 1 = 2 validators per chain, which mark the blocks published
            # in batches (at most 0.2 s late); the others never do.
            async def marked_by_two_publishers() -> bool:
                union = " UNION ALL ".join(
                    f"SELECT chain_id, height FROM {net.schema(i)}.blocks WHERE results_published" for i in range(1, 5)
                )
                counts = await conn.fetch(f"SELECT count(*) AS n FROM ({union}) AS m GROUP BY chain_id, height")
                return len(counts) == len(blocks) and all(r["n"] == 2 for r in counts)

            await wait_for(marked_by_two_publishers, 10, what="every block marked published on its 2 publishers")
        finally:
            await conn.close()
        assert 2_500 <= accepted < 10_000
    finally:
        await net.stop()


async def test_two_hundred_concurrent_locks_exactly_one_wins_everywhere(stack: StackUnderTest) -> None:
    net = LedgerNetwork(stack, extra_env={"FAPIAO_LEDGER_CUT_MS": "20"})
    await net.start()
    waiter = LedgerResultWaiter(stack.kafka_bootstrap, stack.topic_prefix, client_id="locks-waiter")
    await waiter.start()
    producers = [new_producer(stack.kafka_bootstrap, client_id=f"org-{i}") for i in range(4)]
    for producer in producers:
        await producer.start()
    try:
        inv = invoice_id_for_number("26440000000000000077")
        issued = await waiter.submit_and_wait(producers[0], issue(net.issuer, inv, "26440000000000000077"), inv, 30)
        assert issued.accepted
        locks = [reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, inv, f"91440300ORG{i:07d}") for i in range(200)]
        results = await asyncio.gather(
            *(waiter.submit_and_wait(producers[i % 4], tx, inv, 60) for i, tx in enumerate(locks))
        )
        winners = [r for r in results if r.accepted]
        assert len(winners) == 1
        assert {r.rejection_reason for r in results if not r.accepted} == {"ALREADY_LOCKED"}
        winner_org = winners[0].state.lock_holder_tax_id
        # Results come from the first validators to finalize; let the slowest one catch up too.
        await wait_all_final(net, [1, 2, 3, 4], 201, timeout_s=30)
        conn = await asyncpg.connect(stack.database_url)
        try:
            for i in range(1, 5):
                rows = await conn.fetch(
                    f"SELECT transaction_id, accepted FROM {net.schema(i)}.transactions WHERE invoice_id = $1"
                    " AND transaction_id <> $2",
                    inv,
                    issued.transaction_id,
                )
                assert len(rows) == 200
                assert [r["transaction_id"] for r in rows if r["accepted"]] == [winners[0].transaction_id]
                state = ledger_pb2.InvoiceState.FromString(
                    await conn.fetchval(f"SELECT state FROM {net.schema(i)}.invoice_states WHERE invoice_id = $1", inv)
                )
                assert state.lock_holder_tax_id == winner_org
        finally:
            await conn.close()
    finally:
        for producer in producers:
            await producer.stop()
        await waiter.stop()
        await net.stop()


def _signature_replay_start(process: ServiceProcess) -> dict[int, int]:
    """The offsets a validator process started reading the signature topic from (its log)."""
    for line in process.log_text().splitlines():
        if '"reading the signature topic"' in line:
            return ast.literal_eval(json.loads(line)["from_offsets"])  # type: ignore[no-any-return]
    raise AssertionError("the validator did not log where it read the signature topic from")


async def test_killed_validator_recovers_and_blocks_stay_final_with_three(stack: StackUnderTest) -> None:
    # Five recent heights in memory: a restarted validator loads only those and checks the signatures of
    # older blocks, re-read from the topic, against the headers it stored.
    net = LedgerNetwork(
        stack,
        extra_env={"FAPIAO_LEDGER_MAX_TXS": "100", "FAPIAO_LEDGER_CUT_MS": "20", "FAPIAO_LEDGER_RECENT_HEIGHTS": "5"},
    )
    await net.start()
    try:
        txs = mixed_transactions(net, 4_000, seed=11)
        first, second = txs[:1_000], txs[1_000:]
        await net.submit(first)
        # Kill validator 2 while it is busy with the stream.
        await wait_for(
            lambda: count_final(stack.database_url, net.schema(2)), 30, interval_s=0.05, what="validator 2 progress"
        )
        net.processes[2].kill()
        await net.submit(second)
        # The other three still reach quorum on every block.
        await wait_all_final(net, [1, 3, 4], len(txs), timeout_s=60)
        conn = await asyncpg.connect(stack.database_url)
        try:
            replay_from = dict(await conn.fetch("SELECT topic_partition, next_offset FROM ledger_2.signature_replay"))
        finally:
            await conn.close()
        assert replay_from and max(replay_from.values()) > 0
        restarted = await net.start_validator(2)
        await wait_all_final(net, [2], len(txs), timeout_s=60)
        # It read the signature topic again from its stored replay point, not from the start.
        assert _signature_replay_start(restarted) == replay_from
        reference, reference_states = await chain_snapshot(stack.database_url, net.schema(1))
        recovered, recovered_states = await chain_snapshot(stack.database_url, net.schema(2))
        assert recovered == reference
        assert recovered_states == reference_states
        conn = await asyncpg.connect(stack.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ledger_2.divergences") == 0
            assert await conn.fetchval("SELECT count(*) FROM ledger_1.divergences") == 0
            # A validator that lost its database (or a new one) replays the log from offset 0.
            net.processes[3].kill()
            await conn.execute("DROP SCHEMA ledger_3 CASCADE")
        finally:
            await conn.close()
        restarted = await net.start_validator(3)
        await wait_all_final(net, [3], len(txs), timeout_s=60)
        assert set(_signature_replay_start(restarted).values()) == {0}
        assert await chain_snapshot(stack.database_url, net.schema(3)) == (reference, reference_states)
        # One that lost its database and now cuts differently (another block size) would sign other
        # headers for heights it signed before: it finds its earlier signatures on the topic and stops.
        net.processes[4].kill()
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute("DROP SCHEMA ledger_4 CASCADE")
        finally:
            await conn.close()
        net.validator_overrides[4] = {"FAPIAO_LEDGER_MAX_TXS": "7"}
        restarted = await net.start_validator(4)

        async def exited() -> bool:
            return restarted.proc is not None and restarted.proc.poll() is not None  # type: ignore[attr-defined]

        await wait_for(exited, 60, what="validator 4 to refuse a second header and stop")
        assert "refusing to sign a second one" in restarted.log_text()
        assert await count_final(stack.database_url, net.schema(4)) == 0
    finally:
        await net.stop()


async def test_divergent_validator_is_reported_and_quorum_still_finalizes(stack: StackUnderTest) -> None:
    # Validator 4 trusts another registry authority, so it rejects every transaction (unknown key):
    # its results, and so its headers, differ from everyone else's for every block.
    other_authority = SigningKey.generate("authority-1")
    net = LedgerNetwork(
        stack,
        extra_env={"FAPIAO_LEDGER_MAX_TXS": "10", "FAPIAO_LEDGER_CUT_MS": "20"},
        validator_overrides={
            4: {"FAPIAO_LEDGER_AUTHORITY_KEYS": format_key_list({"authority-1": other_authority.public_raw})}
        },
    )
    await net.start()
    try:
        txs = [issue(net.issuer, invoice_id_for_number(f"2646{i:016d}"), f"2646{i:016d}") for i in range(60)]
        await net.submit(txs)
        await wait_all_final(net, [1, 2, 3], len(txs), timeout_s=60)

        async def reported() -> int:
            conn = await asyncpg.connect(stack.database_url)
            try:
                return int(
                    await conn.fetchval("SELECT count(*) FROM ledger_1.divergences WHERE validator_id = 'validator-4'")
                )
            finally:
                await conn.close()

        assert await wait_for(reported, 20, what="divergence of validator-4 recorded") >= 1
        assert await count_final(stack.database_url, net.schema(4)) == 0  # nobody agrees with its headers
        log = net.processes[1].log_text()
        assert "validator header diverges from ours" in log
    finally:
        await net.stop()


def marker_writers(records: list[envelope_pb2.EventEnvelope]) -> list[tuple[str, str, int]]:
    """(writer, chain, height) of every time-to-cut marker in the transaction log, in log order per chain."""
    return [
        (envelope.producer, envelope.aggregate_id, record.time_to_cut.height)
        for envelope in records
        if (record := unpack(envelope, ledger_pb2.LedgerRecord)).WhichOneof("record") == "time_to_cut"
    ]


async def test_when_the_time_cutter_is_down_a_stand_in_takes_over(stack: StackUnderTest) -> None:
    """validator-1 (the first by id) writes the time cuts. Killed, the others stand in after the
    stand-in wait; one whose marker for chain 0's current height is read then writes every time cut alone."""
    net = LedgerNetwork(stack, extra_env={"FAPIAO_LEDGER_CUT_MS": "20"})
    await net.start()
    try:
        net.processes[1].kill()
        numbers = [f"2644{7:04d}{n:012d}" for n in range(40)]
        txs = [issue(net.issuer, invoice_id_for_number(number), number) for number in numbers]
        for first in range(0, len(txs), 5):
            await net.submit(txs[first : first + 5])
            await wait_all_final(net, [2, 3, 4], first + 5, timeout_s=30)
        records = await read_envelopes(stack.kafka_bootstrap, stack.topic("ledger.tx.v1"))
    finally:
        await net.stop()
    writers = marker_writers(records)
    assert writers and "validator-1" not in {writer for writer, _, _ in writers}
    # The stand-ins of the first round(s); then one validator alone, on time, for both chains.
    last = {chain: max(h for _, c, h in writers if c == chain) for _, chain, _ in writers}
    taken_over = {writer for writer, chain, height in writers if height > last[chain] - 4}
    assert len(last) == 2 and len(taken_over) == 1, " ".join(map(str, writers))


async def test_with_the_time_cutter_down_and_chain_0_idle_a_stand_in_still_takes_over(stack: StackUnderTest) -> None:
    """Only chain 0's log moves the time cuts. With validator-1 killed and transactions on chain 1 only,
    the stand-ins claim the role with markers for chain 0's current height that cut nothing there;
    then one validator writes chain 1's time cuts alone instead of a stand-in per block."""
    net = LedgerNetwork(stack, extra_env={"FAPIAO_LEDGER_CUT_MS": "20"})
    await net.start()
    try:
        net.processes[1].kill()
        numbers = [
            number for n in range(200) if chain_of(invoice_id_for_number(number := f"2644{8:04d}{n:012d}"), 2) == 1
        ]
        txs = [issue(net.issuer, invoice_id_for_number(number), number) for number in numbers[:40]]
        for first in range(0, len(txs), 5):
            await net.submit(txs[first : first + 5])
            await wait_all_final(net, [2, 3, 4], first + 5, timeout_s=30)
        records = await read_envelopes(stack.kafka_bootstrap, stack.topic("ledger.tx.v1"))
        conn = await asyncpg.connect(stack.database_url)
        try:
            chain_0_blocks = await conn.fetchval(f"SELECT count(*) FROM {net.schema(2)}.blocks WHERE chain_id = 0")
        finally:
            await conn.close()
    finally:
        await net.stop()
    assert chain_0_blocks == 0
    writers = marker_writers(records)
    claims = [(writer, height) for writer, chain, height in writers if chain == "chain-0"]
    assert claims and {height for _, height in claims} == {1}, " ".join(map(str, writers))
    chain_1 = [(writer, height) for writer, chain, height in writers if chain == "chain-1"]
    assert "validator-1" not in {writer for writer, _ in chain_1 + claims}
    last = max(height for _, height in chain_1)
    taken_over = {writer for writer, height in chain_1 if height > last - 4}
    assert len(taken_over) == 1 and taken_over <= {writer for writer, _ in claims}, " ".join(map(str, writers))
