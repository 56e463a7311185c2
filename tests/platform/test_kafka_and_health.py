"""The first integration tests: a protobuf event through the real broker; a service process's health."""

from __future__ import annotations

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import make_envelope, parse_envelope, unpack
from fapiao_runtime.kafka import new_producer
from fapiao_runtime.topics import LEDGER_SIGNATURES, LEDGER_TRANSACTIONS, PAYMENTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration


async def test_protobuf_event_round_trips_through_real_broker(stack: StackUnderTest) -> None:
    payment = payments_pb2.Payment(payment_id="pay-1", merchant_id="m1", amount_fen=12_345, currency="CNY")
    envelope = make_envelope(payments_pb2.PaymentSucceeded(payment=payment), aggregate_id="m1:o1", producer="test")
    producer = new_producer(stack.kafka_bootstrap, client_id="test")
    await producer.start()
    try:
        await producer.send_and_wait(stack.topic(PAYMENTS.name), envelope.SerializeToString(), key=b"m1:o1")
    finally:
        await producer.stop()
    received = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=1)
    assert len(received) == 1
    back = parse_envelope(received[0].SerializeToString())
    assert back.event_id == envelope.event_id and back.aggregate_id == "m1:o1"
    assert unpack(back, payments_pb2.PaymentSucceeded).payment == payment


async def test_service_process_reports_serving_over_grpc_health(stack: StackUnderTest) -> None:
    service = await stack.start_service("ledger", FAPIAO_VALIDATOR_ID="validator-1", FAPIAO_DB_SCHEMA="ledger_1")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="fapiao.ledger.v1.LedgerService"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        service.terminate()
        assert service.proc.returncode == 0, service.log_text()[-2000:]  # type: ignore[attr-defined]
        assert '"msg": "service stopped"' in service.log_text()
    finally:
        if service.proc.poll() is None:  # type: ignore[attr-defined]
            service.kill()


async def test_the_ledger_log_and_its_signatures_never_expire(stack: StackUnderTest) -> None:
    """A validator that lost its database, or a new one, replays ledger.tx.v1 and ledger.signatures.v1
    from offset 0: `ensure_topics` creates them with no retention limit; other topics keep the default."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        names = [stack.topic(spec.name) for spec in (LEDGER_TRANSACTIONS, LEDGER_SIGNATURES, PAYMENTS)]
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    retention = {
        resource[3]: {entry[0]: entry[1] for entry in resource[4]}
        for response in responses
        for resource in response.resources
    }
    for name in names[:2]:
        assert (retention[name]["retention.ms"], retention[name]["retention.bytes"]) == ("-1", "-1"), name
    assert retention[names[2]]["retention.ms"] != "-1"
