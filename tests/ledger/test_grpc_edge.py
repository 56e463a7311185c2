"""The validator's LedgerService under hostile callers: clients that hang up mid-stream, a lost database,
undecodable requests. Served by the runtime's GrpcServer over a real PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from fapiao.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.grpc_server import GrpcServer
from ledger import store
from ledger.grpc_api import LedgerServicer
from ledger.validator import Validator
from prometheus_client import REGISTRY

from tests.ledger.support import unit_validator

pytestmark = pytest.mark.integration


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


MIGRATIONS = Path(store.__file__).parent / "migrations"
SCHEMA = "validator_edge"
BLOCKS = 300


@dataclass
class Served:
    pool: asyncpg.Pool
    validator: Validator
    stub: ledger_service_pb2_grpc.LedgerServiceStub


@pytest.fixture
async def served(database_url: str) -> AsyncIterator[Served]:
    """A validator's LedgerService whose chain 0 holds BLOCKS final blocks of 20 kB each."""
    pool = await create_pool(database_url, SCHEMA, max_size=4)
    await apply_migrations(pool, SCHEMA, MIGRATIONS)
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO blocks (chain_id, height, header, header_hash, transaction_count, next_offset, final)"
            " VALUES (0, $1, $2, $3, 0, $1, true)",
            [(height, b"h" * 20_000, bytes(32)) for height in range(1, BLOCKS + 1)],
        )
    validator = unit_validator(pool)
    await validator.load([0])  # chain 0 from the database, as `run` loads it (no Kafka loop is started)
    validator.loaded.set()
    server = GrpcServer(["fapiao.ledger.v1.LedgerService"])
    server.add_servicer(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, LedgerServicer(validator))
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(pool, validator, ledger_service_pb2_grpc.LedgerServiceStub(channel))
    finally:
        await server.stop(0)
        await pool.close()


async def test_clients_cancelling_stream_blocks_leave_no_task_exception(served: Served) -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, problem: problems.append(problem))
    try:
        for n in range(30):
            call = served.stub.StreamBlocks(ledger_service_pb2.StreamBlocksRequest(chain_id=0, from_height=1))
            for _ in range(n % 3 + 1):
                await call.read()
            call.cancel()
        # A stream still served after the others hung up: every block, in order, and counted.
        opened, sent = (
            _sample("fapiao_ledger_block_streams_opened_total"),
            _sample("fapiao_ledger_block_stream_blocks_sent_total"),
        )
        call = served.stub.StreamBlocks(ledger_service_pb2.StreamBlocksRequest(chain_id=0, from_height=BLOCKS - 2))
        heights = [BLOCKS - 2 + i for i in range(3)]
        for _ in heights:
            assert (await call.read()).block.final  # type: ignore[union-attr]
        call.cancel()
        assert _sample("fapiao_ledger_block_streams_opened_total") == opened + 1
        assert _sample("fapiao_ledger_block_stream_blocks_sent_total") >= sent + 3  # the hung-up ones may add some
        await asyncio.sleep(0.5)
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(previous)
    assert problems == []
    async with served.pool.acquire() as conn:  # every connection went back to the pool in a usable state
        assert await conn.fetchval("SELECT count(*) FROM blocks") == BLOCKS


async def test_stream_blocks_errors_are_mapped_as_unary_ones(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.StreamBlocks(ledger_service_pb2.StreamBlocksRequest(chain_id=7)).read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("UNKNOWN_CHAIN:")
    await served.pool.close()  # the database is gone: UNAVAILABLE with its reason, not UNKNOWN or INTERNAL
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.stub.StreamBlocks(ledger_service_pb2.StreamBlocksRequest(chain_id=0)).read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("fapiao-reason", "DATABASE_UNAVAILABLE") in tuple(caught.value.trailing_metadata() or ())


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ledger_service_pb2.GetInvoiceStateRequest(invoice_number="2644\x00"), "INVALID_CHARACTERS"),
        (ledger_service_pb2.GetTransactionResultRequest(transaction_id="tx\x00"), "INVALID_CHARACTERS"),
    ],
)
async def test_text_postgresql_refuses_never_reaches_it(served: Served, request_: Any, reason: str) -> None:
    method = served.stub.GetInvoiceState if "Invoice" in type(request_).__name__ else served.stub.GetTransactionResult
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("fapiao-reason", reason) in tuple(caught.value.trailing_metadata() or ())


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ledger_service_pb2.GetInvoiceStateRequest(), "MISSING_LOOKUP"),
        (ledger_service_pb2.GetInvoiceStateRequest(invoice_id="i" * 129), "INVALID_INVOICE_ID"),
        (ledger_service_pb2.GetInvoiceStateRequest(invoice_number=""), "INVALID_INVOICE_NUMBER"),
        (ledger_service_pb2.GetTransactionResultRequest(transaction_id="t" * 129), "INVALID_TRANSACTION_ID"),
    ],
)
async def test_empty_and_oversized_ids_have_their_own_reason(served: Served, request_: Any, reason: str) -> None:
    method = served.stub.GetInvoiceState if "Invoice" in type(request_).__name__ else served.stub.GetTransactionResult
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("fapiao-reason", reason) in tuple(caught.value.trailing_metadata() or ())


async def test_audits_run_one_at_a_time_and_a_crowd_is_refused_at_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight concurrent AuditChain calls: one runs, seven are refused AUDIT_BUSY without waiting."""
    import ledger.grpc_api as grpc_api

    release = asyncio.Event()
    running = 0
    most = 0

    async def held_audit(*args: Any) -> ledger_service_pb2.AuditChainResponse:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return ledger_service_pb2.AuditChainResponse()

    monkeypatch.setattr(grpc_api, "audit_chain", held_audit)
    calls = [
        asyncio.ensure_future(served.stub.AuditChain(ledger_service_pb2.AuditChainRequest(chain_id=0), timeout=30))
        for _ in range(8)
    ]
    refused = []
    for _ in range(7):
        done = next(iter((await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED))[0]))
        calls.remove(done)
        refused.append(done)
    release.set()
    answered = await asyncio.gather(*calls)
    assert len(answered) == 1 and most == 1
    for call in refused:
        error = call.exception()
        assert isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("fapiao-reason", "AUDIT_BUSY") in tuple(error.trailing_metadata() or ())
