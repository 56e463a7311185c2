"""Exactly once: concurrent mixed deliveries, refunds within the paid amount, crash between commit and publish."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import asyncpg
import grpc
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.errors import reason_of
from fapiao_runtime.topics import PAYMENTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from fapiao_stack.procs import free_port
from payment_intake.domain import payment_event_id, payment_id_for
from payment_intake.wechatpay import EVENT_REFUND_SUCCESS, refund_resource

from tests.payment_intake.support import (
    new_transaction_id,
    payment_request,
    payment_resource,
    running_intake,
    stub,
)

pytestmark = pytest.mark.integration


async def test_50_concurrent_deliveries_mixed_grpc_and_webhook_give_one_row_and_one_event(
    stack: StackUnderTest,
) -> None:
    async with running_intake(stack) as intake:
        txn = new_transaction_id()
        # One notification (same id and body), delivered 25 times by webhook with fresh nonces as real
        # retries are, and 25 times over gRPC with the same facts.
        body = intake.notification(payment_resource(intake.merchant_id, txn))
        deliveries = [intake.signer.deliver(body) for _ in range(25)]
        async with intake.channel() as channel, aiohttp.ClientSession() as session:
            client = stub(channel)
            grpc_calls = [client.RecordPayment(payment_request(intake.merchant_id, txn)) for _ in range(25)]
            webhook_calls = [intake.post(session, d) for d in deliveries]
            mixed = [call for pair in zip(grpc_calls, webhook_calls, strict=True) for call in pair]
            results = await asyncio.gather(*mixed)
            replies = [r for r in results if isinstance(r, service_pb2.RecordPaymentResponse)]
            statuses = [r for r in results if isinstance(r, tuple)]
            assert all(status == 200 and body["code"] == "SUCCESS" for status, body in statuses), statuses
            assert len({r.payment.payment_id for r in replies}) == 1
            assert sum(not r.duplicate for r in replies) <= 1
            stored = await client.GetPayment(
                service_pb2.GetPaymentRequest(merchant_id=intake.merchant_id, transaction_id=txn)
            )
        assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 1
        assert await intake.count("SELECT count(*) FROM payment_intake.outbox WHERE topic = 'payments.v1'") == 1
        events = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=1, timeout_s=15)
        assert len(events) == 1
        event = events[0]
        expected_id = payment_id_for(intake.merchant_id, txn)
        assert event.event_id == str(payment_event_id(expected_id))
        assert event.aggregate_id == f"{intake.merchant_id}:order-{txn}"
        published = unpack(event, payments_pb2.PaymentSucceeded).payment
        assert published.payment_id == str(expected_id) == stored.payment.payment_id
        assert published.amount_fen == 12_345 and published.currency == "CNY"
        # The openid is never published; its keyed hash links the payer's payments.
        assert b"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" not in event.SerializeToString()
        assert (
            len(published.payer_ref) == 64
            and published.payer_ref != hashlib.sha256(b"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o").hexdigest()
        )


async def test_refunds_never_exceed_the_payment_even_when_concurrent(stack: StackUnderTest) -> None:
    async with running_intake(stack) as intake, intake.channel() as channel:
        client = stub(channel)
        txn = new_transaction_id()
        await client.RecordPayment(payment_request(intake.merchant_id, txn, total_fen=10_000))

        def refund(refund_id: str, fen: int) -> service_pb2.RecordRefundRequest:
            return service_pb2.RecordRefundRequest(
                merchant_id=intake.merchant_id, transaction_id=txn, refund_id=refund_id, refund_fen=fen
            )

        # Ten concurrent refunds of 30% each: exactly three fit.
        results = await asyncio.gather(
            *(client.RecordRefund(refund(f"r{i}", 3_000)) for i in range(10)), return_exceptions=True
        )
        accepted = [r for r in results if isinstance(r, service_pb2.RecordRefundResponse)]
        rejected = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(accepted) == 3 and len(rejected) == 7
        assert {(e.code(), reason_of(e)) for e in rejected} == {
            (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_PAYMENT")
        }
        # A retried refund is answered with the original; the same id with another amount is a conflict.
        first_id = accepted[0].refund.refund_id
        again = await client.RecordRefund(refund(first_id, 3_000))
        assert again.duplicate and again.payment.refunded_fen == 9_000
        with pytest.raises(grpc.aio.AioRpcError) as conflict:
            await client.RecordRefund(refund(first_id, 500))
        assert (
            conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS and reason_of(conflict.value) == "REFUND_CONFLICT"
        )
        # The last 1,000 fen arrive by webhook (REFUND.SUCCESS); one fen more is refused.
        body = intake.notification(
            refund_resource(
                mchid=intake.merchant_id,
                transaction_id=txn,
                out_trade_no=f"order-{txn}",
                refund_id="r-final",
                refund_fen=1_000,
                total_fen=10_000,
            ),
            event_type=EVENT_REFUND_SUCCESS,
        )
        async with aiohttp.ClientSession() as session:
            status, answer = await intake.post(session, intake.signer.deliver(body))
        assert (status, answer["code"]) == (200, "SUCCESS")
        with pytest.raises(grpc.aio.AioRpcError) as exceeded:
            await client.RecordRefund(refund("r-extra", 1))
        assert reason_of(exceeded.value) == "REFUND_EXCEEDS_PAYMENT"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await client.RecordRefund(
                service_pb2.RecordRefundRequest(
                    merchant_id=intake.merchant_id, transaction_id="nope", refund_id="x", refund_fen=1
                )
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(unknown.value) == "PAYMENT_NOT_FOUND"
        final = await client.GetPayment(
            service_pb2.GetPaymentRequest(merchant_id=intake.merchant_id, transaction_id=txn)
        )
        assert final.payment.refunded_fen == 10_000
        assert final.payment.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert await intake.count("SELECT count(*) FROM payment_intake.refunds") == 4
    events = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=5, timeout_s=15)
    types = sorted(e.event_type for e in events)
    assert types == ["fapiao.payments.v1.PaymentRefunded"] * 4 + ["fapiao.payments.v1.PaymentSucceeded"]
    refunded = [unpack(e, payments_pb2.PaymentRefunded) for e in events if e.event_type.endswith("Refunded")]
    assert sum(r.refund.refund_fen for r in refunded) == 10_000


async def test_killing_the_service_between_commit_and_publish_loses_no_event(stack: StackUnderTest) -> None:
    async with running_intake(stack) as intake:
        # Hold the relay's leader lock so the committed event cannot be published before the kill.
        blocker = await asyncpg.connect(stack.database_url)
        lock_key = int.from_bytes(hashlib.sha256(b"outbox-relay:payment_intake").digest()[:8], "big", signed=True)
        try:
            intake.process.kill()  # the running relay holds the lock; start over without it
            assert await blocker.fetchval("SELECT pg_try_advisory_lock($1)", lock_key)
            await intake.restart()
            txn = new_transaction_id()
            body = intake.notification(payment_resource(intake.merchant_id, txn))
            async with aiohttp.ClientSession() as session:
                status, answer = await intake.post(session, intake.signer.deliver(body))
            assert (status, answer["code"]) == (200, "SUCCESS")
            intake.process.kill()  # SIGKILL right after the 2xx: committed, not published
            assert (
                await intake.count(
                    "SELECT count(*) FROM payment_intake.outbox WHERE sent_at IS NULL AND topic = 'payments.v1'"
                )
                == 1
            )
            assert await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), timeout_s=3, idle_s=1) == []
        finally:
            await blocker.close()  # releases the lock
        await intake.restart()
        events = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=1, timeout_s=20)
        assert [e.event_id for e in events] == [str(payment_event_id(payment_id_for(intake.merchant_id, txn)))]
        # The platform's retry after the crash is answered 200 and makes no second event.
        async with aiohttp.ClientSession() as session:
            status, _ = await intake.post(session, intake.signer.deliver(body))
        assert status == 200
        assert await intake.count("SELECT count(*) FROM payment_intake.outbox WHERE topic = 'payments.v1'") == 1


async def test_two_replicas_share_idempotency_and_replay_protection(stack: StackUnderTest) -> None:
    async with running_intake(stack) as first:
        second_port = free_port()
        second = await stack.start_service("payment_intake", **{**first.env(), "FAPIAO_WEBHOOK_PORT": str(second_port)})
        try:
            txn = new_transaction_id()
            body = first.notification(payment_resource(first.merchant_id, txn))
            urls = [first.notify_url, first.notify_url.replace(str(first.webhook_port), str(second_port))]
            replayed = first.signer.deliver(body)
            async with (
                aiohttp.ClientSession() as session,
                first.channel() as channel_a,
                grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel_b,
            ):
                stubs = [stub(channel_a), stub(channel_b)]
                calls = [first.post(session, first.signer.deliver(body), urls[i % 2]) for i in range(20)]
                calls += [stubs[i % 2].RecordPayment(payment_request(first.merchant_id, txn)) for i in range(20)]
                # The very same signed request sent to both replicas at once: one of them records it.
                calls += [first.post(session, replayed, url) for url in urls]
                results = await asyncio.gather(*calls)
            webhook = list(results[:20]) + list(results[40:])
            assert all(status == 200 for status, _ in webhook[:20])
            assert sorted(answer["code"] for _, answer in webhook[20:]) == ["REPLAYED_NONCE", "SUCCESS"]
            assert len({r.payment.payment_id for r in results[20:40]}) == 1
        finally:
            second.kill()
        assert await first.count("SELECT count(*) FROM payment_intake.payments") == 1
        assert await first.count("SELECT count(*) FROM payment_intake.outbox WHERE topic = 'payments.v1'") == 1
        assert await first.count("SELECT count(*) FROM payment_intake.webhook_nonces") == 21
        events = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=1, timeout_s=15)
        assert len(events) == 1
