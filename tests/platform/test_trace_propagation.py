"""A traceparent sent with a gRPC call or an HTTP request reaches every Kafka record the request causes and
the log lines of every service it touches (payment_intake, then invoice_minting consuming the payment; a
claim and its ISSUE transaction), and continues into the events a consumer produces while it applies a
traced record."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import asyncpg
import pytest
from fapiao.common.v1 import envelope_pb2
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime import tracing
from fapiao_runtime.consumer import EventConsumer
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope, outgoing
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.outbox import enqueue
from fapiao_runtime.topics import LEDGER_TRANSACTIONS, MERCHANTS, PAYMENTS
from fapiao_stack.harness import ServiceProcess, StackUnderTest, read_envelopes

from tests.invoice_minting.support import minting_service, person
from tests.payment_intake.support import new_transaction_id, payment_request, payment_resource, running_intake, stub

pytestmark = pytest.mark.integration


def _traceparent() -> tuple[str, str]:
    trace_id = uuid.uuid4().hex
    return f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01", trace_id


def _lines_with(service: ServiceProcess, trace_id: str) -> list[dict[str, object]]:
    lines = []
    for raw in service.log_text().splitlines():
        if trace_id in raw:
            entry = json.loads(raw)
            if entry.get("trace_id") == trace_id:
                lines.append(entry)
    return lines


async def _eventually_logged(service: ServiceProcess, trace_id: str, msg: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 60
    while True:
        lines = _lines_with(service, trace_id)
        if any(line["msg"] == msg for line in lines) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.2)


async def test_a_trace_reaches_the_payment_event_and_the_logs_of_both_services(stack: StackUnderTest) -> None:
    debug = {"FAPIAO_LOG_LEVEL": "DEBUG"}
    async with running_intake(stack, **debug) as intake, minting_service(stack, **debug) as minting:
        await minting.wait_merchant_key(intake.merchant_id)
        by_grpc, grpc_trace = _traceparent()
        async with intake.channel() as channel:
            recorded = await stub(channel).RecordPayment(
                payment_request(intake.merchant_id, new_transaction_id()),
                metadata=(("traceparent", by_grpc),),
                timeout=30,
            )
        by_http, http_trace = _traceparent()
        body = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
        delivery = intake.signer.deliver(body)
        delivery.headers["traceparent"] = by_http
        async with aiohttp.ClientSession() as session:
            status, answer = await intake.post(session, delivery)
        assert status == 200, answer

        payments = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=2, timeout_s=30)
        traces = {tracing.trace_id_of(e.traceparent) for e in payments}
        assert traces == {grpc_trace, http_trace}
        assert by_grpc not in {e.traceparent for e in payments}  # the server's own span, in the same trace

        for trace_id, handled in ((grpc_trace, "request handled"), (http_trace, "notification recorded")):
            intake_lines = await _eventually_logged(intake.process, trace_id, handled)
            assert intake_lines, f"no payment_intake line carries {trace_id}"
            minting_lines = await _eventually_logged(minting.service, trace_id, "event applied")
            assert any(line["msg"] == "event applied" for line in minting_lines), minting_lines
            assert {line["service"] for line in minting_lines} == {"invoice_minting"}
        merchants = await read_envelopes(stack.kafka_bootstrap, stack.topic(MERCHANTS.name), expected=1)
        assert all(tracing.trace_id_of(e.traceparent) not in (grpc_trace, http_trace) for e in merchants)

        # A claim, minted by a group-commit worker, submits its ISSUE in the trace of the claim request.
        token = await minting.token(intake.merchant_id, recorded.payment.payment_id)
        by_claim, claim_trace = _traceparent()
        await minting.stub.ClaimInvoice(
            api.ClaimInvoiceRequest(claim_token=token, buyer=person(), idempotency_key="traced"),
            metadata=(("traceparent", by_claim),),
            timeout=30,
        )
        issued = await read_envelopes(
            stack.kafka_bootstrap, stack.topic(LEDGER_TRANSACTIONS.name), expected=1, timeout_s=30
        )
        claims = [e for e in issued if e.aggregate_id and not e.aggregate_id.startswith(("key:", "chain-"))]
        assert [tracing.trace_id_of(e.traceparent) for e in claims] == [claim_trace]
        assert await _eventually_logged(minting.service, claim_trace, "request handled")


async def _caused(
    stack: StackUnderTest, envelopes: list[envelope_pb2.EventEnvelope], *, batched: bool
) -> dict[str, envelope_pb2.EventEnvelope]:
    """Consume `envelopes` with an EventConsumer whose handler (or batch handler) writes one event per
    record into the outbox; the written events by aggregate id."""
    schema = f"traced_{uuid.uuid4().hex[:6]}"
    pool = await create_pool(stack.database_url, schema)
    try:
        await apply_migrations(pool, schema, None)
        producer = new_producer(stack.kafka_bootstrap, client_id="trace-test")
        await producer.start()
        try:
            for envelope in envelopes:
                await producer.send(stack.topic(PAYMENTS.name), envelope.SerializeToString(), key=schema.encode())
            await producer.flush()
        finally:
            await producer.stop()

        async def produce_more(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope) -> None:
            made = make_envelope(payments_pb2.PaymentRefunded(), aggregate_id=envelope.aggregate_id, producer="t")
            await enqueue(conn, [outgoing("caused.v1", made)])

        async def produce_batch(conn: asyncpg.Connection, batch: list[envelope_pb2.EventEnvelope]) -> None:
            for envelope in batch:
                await produce_more(conn, envelope)

        consumer = EventConsumer(
            bootstrap=stack.kafka_bootstrap,
            topics=[stack.topic(PAYMENTS.name)],
            group_id=schema,
            pool=pool,
            handler=produce_more,
            batch_handler=produce_batch if batched else None,
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(consumer.run(stop))
        try:
            for _ in range(300):
                if consumer.applied >= len(envelopes):
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await task
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT payload FROM outbox ORDER BY id")
    finally:
        await pool.close()
    caused = [envelope_pb2.EventEnvelope.FromString(r["payload"]) for r in rows]
    return {e.aggregate_id: e for e in caused}


async def test_a_consumer_continues_the_trace_of_the_record_it_applies(stack: StackUnderTest) -> None:
    """The events a handler writes while it applies a traced record carry that record's trace id."""
    traceparent, trace_id = _traceparent()
    source = make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id="a", producer="t", traceparent=traceparent)
    untraced = make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id="b", producer="t", traceparent="")
    caused = await _caused(stack, [source, untraced], batched=False)
    assert set(caused) == {"a", "b"}
    assert tracing.trace_id_of(caused["a"].traceparent) == trace_id
    assert caused["a"].traceparent != traceparent  # the consumer's own span
    assert tracing.trace_id_of(caused["b"].traceparent) not in ("", trace_id)  # a record without one: a new trace


async def test_a_batch_of_one_trace_is_applied_in_that_trace(stack: StackUnderTest) -> None:
    traceparent, trace_id = _traceparent()
    records = [
        make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id=name, producer="t", traceparent=traceparent)
        for name in ("a", "b", "c")
    ]
    caused = await _caused(stack, records, batched=True)
    assert {name: tracing.trace_id_of(e.traceparent) for name, e in caused.items()} == dict.fromkeys("abc", trace_id)
