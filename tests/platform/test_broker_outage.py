"""A service rides out a crashed Kafka broker (kill -9 of a broker of the test's own): payments are still
accepted (they wait in the outbox), health stays SERVING, the log gets a few lines rather than one per
retry, and once the broker is back every acknowledged payment is published, each once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from fapiao_runtime.kafka import ensure_topics
from fapiao_runtime.topics import PAYMENTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.procs import free_port

from tests.payment_intake.support import new_transaction_id, payment_request, register, stub
from tests.platform.test_self_healing import new_intake
from tests.support.outages import health, log_lines

pytestmark = pytest.mark.integration


async def test_payment_intake_rides_out_a_killed_broker_and_publishes_what_it_acknowledged(
    database_url: str, tmp_path: Path
) -> None:
    broker = KafkaBroker(tmp_path / "own-kafka", free_port(), free_port(), tmp_path / "own-kafka.log", heap="512m")
    await asyncio.to_thread(broker.start, 120.0)
    try:
        prefix = f"o{uuid.uuid4().hex[:8]}."
        await ensure_topics(broker.bootstrap, prefix)
        own = StackUnderTest(broker.bootstrap, database_url, prefix, tmp_path)
        intake = new_intake(own)
        await intake.restart()
        try:
            await register(own, intake.secrets_key, intake.merchant_id, intake.apiv3_key)
            async with intake.channel() as channel:
                await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
                assert len(await read_envelopes(own.kafka_bootstrap, own.topic(PAYMENTS.name), expected=1)) == 1

                assert broker.proc is not None
                broker.proc.kill()
                await asyncio.to_thread(broker.proc.wait)
                # Accepted while the broker is down: the payment waits in the outbox.
                during = await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
                assert not during.duplicate
                assert await health(intake.process) == "SERVING"
                # The relay's round waits for the broker (the producer retries its sends), and stays up.
                await asyncio.sleep(4)
                assert intake.process.proc.poll() is None, intake.process.log_text()[-3000:]  # type: ignore[attr-defined]
                client_lines = [line for line in log_lines(intake.process) if line["logger"].startswith("aiokafka")]
                assert len(client_lines) <= 10, [line["msg"] for line in client_lines]

                await asyncio.to_thread(broker.start, 120.0)
                after = await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
                assert not after.duplicate
            events = await read_envelopes(own.kafka_bootstrap, own.topic(PAYMENTS.name), expected=3, timeout_s=90)
            ids = [e.aggregate_id for e in events]
            assert len(ids) == 3 and len(set(ids)) == 3, ids
            assert intake.process.proc.poll() is None  # type: ignore[attr-defined]
            assert not [line for line in log_lines(intake.process) if line.get("msg") == "unhandled error"]
        finally:
            intake.process.kill()
    finally:
        await asyncio.to_thread(broker.stop)
