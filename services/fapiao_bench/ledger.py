"""Ledger benchmark: 4 validator processes (quorum 3) over 2 partitions on the real broker and database.

ledger_committed_tx_per_s: pre-signed transactions (half ISSUE, half LOCK) produced as fast as
possible; committed = its result was published, which validators do only once the block is final by
quorum. Measured from the first send to the last distinct result read.
ledger_validator_cpu_us_per_tx: CPU seconds one validator process spent per committed transaction
during the throughput phase (independent of other load on the machine).
ledger_validator_cpu_us_per_tx_at_1000_tx_per_s: the same during the paced 1,000 tx/s run, where
fetched batches and blocks are smaller than at saturation; ledger_validators_cpu_cores_at_<rate>: the
four validators' CPU seconds per second during the paced runs, ledger_blocks_per_s_at_<rate> the
blocks cut (both chains) per second, and ledger_validator_cpu_ms_per_block_at_200_tx_per_s one
validator's CPU per block at 200 tx/s, where blocks hold a few transactions each: the fixed work of a
block (its signatures in and out, its statements, its fetches and results).
ledger_execute_us_per_tx, ledger_execute_signature_share: execution alone in this process
(`ledger_execute`): no broker, database or other process in what it measures.
ledger_commit_p99_ms (and p50): transactions sent at a paced 1,000 tx/s; latency from just before the
send to the first copy of its final result on ledger.results.v1.
ledger_hop_<hop>_p50_ms / _p99_ms: where that latency goes, from the Kafka timestamps of the records
of the paced run (read back afterwards, blocks rebuilt with the validators' cutting rule):
  marker           transaction record -> the time-to-cut marker that cut its block
  first_signature  marker -> the first validator's signature of that block
  quorum           first signature -> the quorum-th signature (the block is final)
  result           quorum -> the first copy of the transaction's result record
  client           result record -> the benchmark's consumer reads it
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import parse_envelope, unpack
from fapiao_runtime.invoice_ids import invoice_id_for_number
from fapiao_runtime.ledger_client import consumer_at_end, topic_partitions, transaction_event
from fapiao_runtime.topics import LEDGER_RESULTS, LEDGER_SIGNATURES, LEDGER_TRANSACTIONS
from fapiao_stack.devnet import LedgerNetwork, T, issue, reimburse
from fapiao_stack.harness import StackUnderTest
from ledger.records import decode_record

from fapiao_bench import ledger_execute
from fapiao_bench.cpu import cpu_seconds
from fapiao_bench.stats import percentile

THROUGHPUT_INVOICES = 8_000
PACED_RATE_PER_S = 1_000
PACED_SECONDS = 8
LOW_RATE_PER_S = 200
LOW_RATE_SECONDS = 5
MAX_TXS = 500
QUORUM = 3
HOPS = ("marker", "first_signature", "quorum", "result", "client")


class ResultClock:
    """Records when the first final result of each transaction id arrives."""

    def __init__(self, env: StackUnderTest) -> None:
        self.env = env
        self.arrived: dict[str, float] = {}  # perf_counter seconds
        self.wall_offset = time.time() - time.perf_counter()  # arrived + wall_offset = Unix time
        self.accepted = 0
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        topic = self.env.topic(LEDGER_RESULTS.name)
        consumer = await consumer_at_end(self.env.kafka_bootstrap, topic, max_poll_records=5000)
        self._consumer = consumer
        self._task = asyncio.ensure_future(self._run(consumer))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    if record.key is not None and record.key.decode() in self.arrived:
                        continue  # another validator's copy of a result already seen
                    result = unpack(parse_envelope(record.value), ledger_pb2.TransactionResult)
                    if result.transaction_id not in self.arrived:
                        self.arrived[result.transaction_id] = now
                        self.accepted += int(result.accepted)

    async def wait_for(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(i not in self.arrived for i in ids):
            if time.monotonic() > deadline:
                missing = sum(1 for i in ids if i not in self.arrived)
                raise TimeoutError(f"{missing} of {len(ids)} results missing after {timeout_s}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def _events(net: LedgerNetwork, txs: list[ledger_pb2.SignedTransaction]) -> list[tuple[str, bytes, bytes]]:
    out = []
    for tx in txs:
        body = ledger_pb2.TransactionBody.FromString(tx.body)
        event = transaction_event(tx, body.invoice_id, "bench")
        out.append((body.transaction_id, event.key, event.envelope_bytes))
    return out


async def _read_topic(env: StackUnderTest, name: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of a topic as (partition, timestamp ms, key, value), partitions in offset order."""
    topic = env.topic(name)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.kafka_bootstrap, group_id=None, enable_auto_commit=False, max_poll_records=20_000
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[int, int, bytes | None, bytes | None]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                out += [(tp.partition, r.timestamp, r.key, r.value) for r in records]
        return out
    finally:
        await consumer.stop()


async def _hops(env: StackUnderTest, clock: ResultClock, ids: set[str]) -> dict[str, float]:
    """Per-hop p50 / p99 (ms) of the transactions `ids`, from the records' Kafka timestamps."""
    signatures: dict[tuple[int, int], list[int]] = {}
    for _, timestamp, _, value in await _read_topic(env, LEDGER_SIGNATURES.name):
        signature = unpack(parse_envelope(value or b""), ledger_pb2.BlockSignature)
        signatures.setdefault((signature.chain_id, signature.height), []).append(timestamp)
    first_result: dict[str, int] = {}
    for _, timestamp, key, _ in await _read_topic(env, LEDGER_RESULTS.name):
        tx_id = (key or b"").decode()
        first_result[tx_id] = min(timestamp, first_result.get(tx_id, timestamp))
    hops: dict[str, list[float]] = {hop: [] for hop in HOPS}
    pending: dict[int, list[tuple[str, int]]] = {}
    height: dict[int, int] = {}
    for partition, timestamp, _, value in await _read_topic(env, LEDGER_TRANSACTIONS.name):
        record = decode_record(0, value)
        block = pending.setdefault(partition, [])
        cut_at: int | None = None
        if record.kind == "tx" and record.tx is not None:
            block.append((record.tx.body.transaction_id if record.tx.body is not None else "", timestamp))
            if len(block) >= MAX_TXS:
                cut_at = timestamp
        elif record.kind == "cut" and record.marker is not None and block:
            if record.marker.height == height.get(partition, 1):
                cut_at = timestamp
        if cut_at is None:
            continue
        block_height = height.get(partition, 1)
        height[partition] = block_height + 1
        pending[partition] = []
        signed = sorted(signatures.get((partition, block_height), []))
        if len(signed) < QUORUM:
            continue
        for tx_id, sent in block:
            if tx_id not in ids or tx_id not in first_result or tx_id not in clock.arrived:
                continue
            received_ms = (clock.arrived[tx_id] + clock.wall_offset) * 1000
            hops["marker"].append(cut_at - sent)
            hops["first_signature"].append(signed[0] - cut_at)
            hops["quorum"].append(signed[QUORUM - 1] - signed[0])
            hops["result"].append(first_result[tx_id] - signed[QUORUM - 1])
            hops["client"].append(received_ms - first_result[tx_id])
    figures: dict[str, float] = {}
    for hop, values in hops.items():
        if len(values) < len(ids) // 2:
            return {}  # the log could not be matched to blocks: report nothing rather than a wrong split
        figures[f"ledger_hop_{hop}_p50_ms"] = percentile(values, 0.5)
        figures[f"ledger_hop_{hop}_p99_ms"] = percentile(values, 0.99)
    return figures


async def _paced_latency(
    net: LedgerNetwork, clock: ResultClock, topic: str, rate_per_s: int, seconds: int, series: int
) -> tuple[float, float, float, set[str]]:
    """Send ISSUEs at `rate_per_s` for `seconds`; return (p50 ms, p99 ms, offered tx/s, transaction ids)."""
    assert net.producer is not None
    numbers = [f"2645{series:02d}{i:014d}" for i in range(rate_per_s * seconds)]
    paced = [issue(net.issuer, invoice_id_for_number(number), number) for number in numbers]
    paced_events = _events(net, paced)
    sent_at: dict[str, float] = {}
    tick_s = 0.01
    per_tick = max(1, int(rate_per_s * tick_s))
    begin = time.perf_counter()
    pending = []
    for n in range(0, len(paced_events), per_tick):
        delay = begin + (n // per_tick) * tick_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        for tx_id, key, value in paced_events[n : n + per_tick]:
            sent_at[tx_id] = time.perf_counter()
            pending.append(await net.producer.send(topic, value=value, key=key))
    offered = len(paced_events) / (time.perf_counter() - begin)
    await asyncio.gather(*pending)
    await clock.wait_for(list(sent_at), timeout_s=60)
    latencies = [(clock.arrived[i] - t) * 1000 for i, t in sent_at.items()]
    return percentile(latencies, 0.5), percentile(latencies, 0.99), offered, set(sent_at)


async def _blocks_stored(database_url: str, schema: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.blocks"))
    finally:
        await conn.close()


async def _metered_paced_run(
    net: LedgerNetwork, clock: ResultClock, topic: str, rate_per_s: int, seconds: int, series: int
) -> tuple[dict[str, float], set[str]]:
    """`_paced_latency`, with the validators' CPU and the blocks cut (read from the first validator's
    schema) over the run, from its first send until its last result arrived."""
    pids = [p.proc.pid for p in net.processes.values()]  # type: ignore[attr-defined]
    schema = net.schema(1)
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    blocks_before = await _blocks_stored(net.stack.database_url, schema)
    started = time.perf_counter()
    p50, p99, offered, ids = await _paced_latency(net, clock, topic, rate_per_s, seconds, series)
    elapsed_s = time.perf_counter() - started
    cpu_s = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    blocks = await _blocks_stored(net.stack.database_url, schema) - blocks_before
    figures = {
        "p50_ms": p50,
        "p99_ms": p99,
        "offered_tx_per_s": offered,
        "validator_cpu_us_per_tx": cpu_s / len(pids) / len(ids) * 1e6,
        "validators_cpu_cores": cpu_s / elapsed_s,
        "blocks_per_s": blocks / elapsed_s,
        "validator_cpu_ms_per_block": cpu_s / len(pids) / max(1, blocks) * 1e3,
    }
    return figures, ids


async def run(env: StackUnderTest) -> dict[str, float]:
    execution = ledger_execute.measure()  # first, while nothing else runs
    net = LedgerNetwork(env, extra_env={"FAPIAO_LEDGER_MAX_TXS": str(MAX_TXS)})  # the default cut interval
    await net.start()
    clock = ResultClock(env)
    await clock.start()
    try:
        assert net.producer is not None
        topic = env.topic("ledger.tx.v1")
        # Throughput: issue then lock each invoice (pre-signed, so only the ledger is measured).
        invoices = [invoice_id_for_number(f"2644{i:016d}") for i in range(THROUGHPUT_INVOICES)]
        txs = [issue(net.issuer, inv, f"2644{i:016d}") for i, inv in enumerate(invoices)]
        txs += [reimburse(net.reimburser, T.TRANSACTION_TYPE_LOCK, inv, "91440300ORG0000001") for inv in invoices]
        events = _events(net, txs)
        pids = [p.proc.pid for p in net.processes.values()]  # type: ignore[attr-defined]
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        futures = [await net.producer.send(topic, value=value, key=key) for _, key, value in events]
        await asyncio.gather(*futures)
        ids = [tx_id for tx_id, _, _ in events]
        await clock.wait_for(ids, timeout_s=120)
        elapsed = max(clock.arrived[i] for i in ids) - started
        throughput = len(ids) / elapsed
        cpu_per_tx_us = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) / len(pids) / len(ids) * 1e6

        # Latency at a paced 1,000 tx/s, and at 200 tx/s (below saturation on a shared machine).
        fast, paced_ids = await _metered_paced_run(net, clock, topic, PACED_RATE_PER_S, PACED_SECONDS, series=1)
        slow, _ = await _metered_paced_run(net, clock, topic, LOW_RATE_PER_S, LOW_RATE_SECONDS, series=2)
        return {
            **await _hops(env, clock, paced_ids),
            "ledger_committed_tx_per_s": throughput,
            "ledger_commit_p50_ms": fast["p50_ms"],
            "ledger_commit_p99_ms": fast["p99_ms"],
            "ledger_commit_p99_ms_at_200_tx_per_s": slow["p99_ms"],
            # CPU one validator spends per committed transaction (execution, storage, signatures, results).
            "ledger_validator_cpu_us_per_tx": cpu_per_tx_us,
            "ledger_validator_cpu_us_per_tx_at_1000_tx_per_s": fast["validator_cpu_us_per_tx"],
            "ledger_validators_cpu_cores_at_1000_tx_per_s": fast["validators_cpu_cores"],
            "ledger_blocks_per_s_at_1000_tx_per_s": fast["blocks_per_s"],
            "ledger_validators_cpu_cores_at_200_tx_per_s": slow["validators_cpu_cores"],
            "ledger_blocks_per_s_at_200_tx_per_s": slow["blocks_per_s"],
            "ledger_validator_cpu_ms_per_block_at_200_tx_per_s": slow["validator_cpu_ms_per_block"],
            **execution,
            "ledger_paced_offered_tx_per_s": fast["offered_tx_per_s"],
        }
    finally:
        await clock.stop()
        await net.stop()
