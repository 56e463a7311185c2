"""Validators ride out a crashed PostgreSQL (kill -9 of the server all four store in): they stay up,
answer UNAVAILABLE and report NOT_SERVING while it is down, start over from their store once it is back
(no transaction skipped, none applied twice) and hold identical, auditable chains afterwards."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from fapiao.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from fapiao_runtime.invoice_ids import invoice_id_for_number
from fapiao_runtime.ledger_client import LedgerResultWaiter
from fapiao_runtime.topics import LEDGER_TRANSACTIONS
from fapiao_stack.devnet import LedgerNetwork, count_final, issue
from fapiao_stack.harness import StackUnderTest

from tests.support.outages import eventually, health, logged, own_postgres, stack_on

pytestmark = pytest.mark.integration

LOST = "background task lost a dependency; retrying with back-off"


def _stub(net: LedgerNetwork, index: int) -> tuple[grpc.aio.Channel, ledger_service_pb2_grpc.LedgerServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{net.processes[index].port}")
    return channel, ledger_service_pb2_grpc.LedgerServiceStub(channel)


async def _blocks(database_url: str, schema: str) -> list[tuple[int, int, bytes]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(f"SELECT chain_id, height, header_hash FROM {schema}.blocks ORDER BY chain_id, height")
        return [(r["chain_id"], r["height"], bytes(r["header_hash"])) for r in rows]
    finally:
        await conn.close()


async def test_validators_ride_out_a_killed_postgres_and_skip_no_transaction(stack: StackUnderTest) -> None:
    async with own_postgres(stack.tmp_path) as postgres:
        own = stack_on(stack, postgres)
        net = LedgerNetwork(own, extra_env={"FAPIAO_LEDGER_CUT_MS": "20"})
        await net.start()
        waiter = LedgerResultWaiter(own.kafka_bootstrap, own.topic_prefix, client_id="outage-waiter")
        await waiter.start()
        try:
            assert net.producer is not None
            numbers = [f"2644000000000000{n:04d}" for n in range(1, 5)]
            invoices = [invoice_id_for_number(n) for n in numbers]
            first = await waiter.submit_and_wait(
                net.producer, issue(net.issuer, invoices[0], numbers[0]), invoices[0], 30
            )
            assert first.accepted, first

            postgres.kill()
            # Transactions the broker acknowledges while the validators' database is down.
            during = [
                asyncio.ensure_future(
                    waiter.submit_and_wait(net.producer, issue(net.issuer, inv, number), inv, timeout_s=120)
                )
                for inv, number in zip(invoices[1:3], numbers[1:3], strict=True)
            ]
            for index in net.processes:
                channel, stub = _stub(net, index)
                async with channel:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.GetInvoiceState(
                            ledger_service_pb2.GetInvoiceStateRequest(invoice_id=invoices[0]), timeout=20
                        )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (index, refused.value)
            for index, process in net.processes.items():
                await eventually(lambda p=process: logged(p, LOST), 60, f"validator {index}'s outage line")  # type: ignore[misc]
                await eventually(lambda p=process: _health_is(p, "NOT_SERVING"), 30, f"validator {index} NOT_SERVING")  # type: ignore[misc]
            await asyncio.sleep(3)  # several rounds of back-off: nobody exits meanwhile
            for index, process in net.processes.items():
                assert process.proc.poll() is None, (index, process.log_text()[-3000:])  # type: ignore[attr-defined]

            await asyncio.to_thread(postgres.start)
            for index, process in net.processes.items():
                await eventually(lambda p=process: _health_is(p, "SERVING"), 90, f"validator {index} SERVING again")  # type: ignore[misc]
            results = await asyncio.gather(*during)
            assert all(r.accepted for r in results), results
            last = await waiter.submit_and_wait(
                net.producer, issue(net.issuer, invoices[3], numbers[3]), invoices[3], 60
            )
            assert last.accepted, last

            # Every transaction once on every validator, and the same blocks everywhere.
            async def all_final() -> bool:
                counts = [await count_final(own.database_url, net.schema(i)) for i in net.processes]
                assert max(counts) <= len(invoices), counts  # nothing applied twice
                return all(c == len(invoices) for c in counts)

            await eventually(all_final, 60, "4 final transactions on every validator")
            chains = [await _blocks(own.database_url, net.schema(i)) for i in net.processes]
            assert all(chain == chains[0] for chain in chains)
            for index in net.processes:
                channel, stub = _stub(net, index)
                async with channel:
                    for chain_id in range(LEDGER_TRANSACTIONS.partitions):
                        audit = await stub.AuditChain(ledger_service_pb2.AuditChainRequest(chain_id=chain_id))
                        assert audit.ok, (index, chain_id, audit.findings)
        finally:
            await waiter.stop()
            await net.stop()


async def _health_is(process: object, status: str) -> bool:
    return await health(process) == status  # type: ignore[arg-type]
