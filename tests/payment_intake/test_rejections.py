"""Every forged, replayed, malformed or absurd notification is refused with its own reason; nothing is stored."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import grpc
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import reason_of
from fapiao_runtime.topics import PAYMENTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from payment_intake.wechatpay import HEADER_SIGNATURE, Delivery, encrypt_resource, generate_apiv3_key

from tests.payment_intake.support import (
    OTHER_PLATFORM,
    PLATFORM,
    Intake,
    new_transaction_id,
    payment_request,
    payment_resource,
    running_intake,
    stub,
)

pytestmark = pytest.mark.integration


def _signed(intake: Intake, body: bytes, **kwargs: Any) -> Delivery:
    return intake.signer.deliver(body, **kwargs)


def _with_resource(intake: Intake, resource: dict[str, Any], mutate: Any) -> bytes:
    envelope = json.loads(intake.notification(resource))
    mutate(envelope)
    return json.dumps(envelope).encode()


def _tamper_ciphertext(envelope: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
    raw[3] ^= 0x01
    envelope["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()


async def test_every_rejection_has_its_own_reason_and_stores_nothing(stack: StackUnderTest) -> None:
    async with running_intake(stack) as intake:
        async with aiohttp.ClientSession() as session:
            merchant = intake.merchant_id
            paid_txn = new_transaction_id()
            original = _signed(intake, intake.notification(payment_resource(merchant, paid_txn)))
            assert (await intake.post(session, original))[0] == 200

            fresh = payment_resource(merchant, new_transaction_id())
            good_body = intake.notification(fresh)
            forged = _signed(intake, good_body)
            forged.headers[HEADER_SIGNATURE] = OTHER_PLATFORM.sign(
                forged.headers["Wechatpay-Timestamp"], forged.headers["Wechatpay-Nonce"], good_body
            )
            altered = _signed(intake, good_body)
            altered = Delivery(altered.headers, good_body.replace(b'"id":"', b'"id":"x'))
            probe = _signed(intake, good_body)
            probe.headers[HEADER_SIGNATURE] = "WECHATPAY/SIGNTEST/" + probe.headers[HEADER_SIGNATURE]
            no_headers = Delivery({"Content-Type": "application/json"}, good_body)
            # A timestamp of digits Python's isdigit() takes but int() does not (superscript two).
            odd_digits = _signed(intake, good_body)
            odd_digits.headers["Wechatpay-Timestamp"] = "²" * 10
            wrong_key_resource = json.loads(good_body)
            wrong_key_resource["resource"] = encrypt_resource(generate_apiv3_key(), json.dumps(fresh).encode())
            not_an_object = encrypt_resource(intake.apiv3_key, b"[1, 2]")

            def resource_with(**changes: Any) -> bytes:
                return intake.notification({**fresh, **changes})

            def amount(**changes: Any) -> bytes:
                return resource_with(amount={**fresh["amount"], **changes})

            cases: list[tuple[str, int, str, Delivery, str | None]] = [
                ("forged signature", 401, "BAD_SIGNATURE", forged, None),
                ("body altered after signing", 401, "BAD_SIGNATURE", altered, None),
                ("untrusted key serial", 401, "UNKNOWN_SERIAL", OTHER_PLATFORM.deliver(good_body), None),
                ("replayed request", 409, "REPLAYED_NONCE", original, None),
                (
                    "stale timestamp",
                    401,
                    "STALE_TIMESTAMP",
                    _signed(intake, good_body, timestamp=int(time.time()) - 301),
                    None,
                ),
                (
                    "future timestamp",
                    401,
                    "STALE_TIMESTAMP",
                    _signed(intake, good_body, timestamp=int(time.time()) + 400),
                    None,
                ),
                ("signature probe", 401, "SIGNTEST_PROBE", probe, None),
                ("missing headers", 401, "MALFORMED_HEADERS", no_headers, None),
                ("timestamp of non-ASCII digits", 401, "MALFORMED_HEADERS", odd_digits, None),
                (
                    "tampered ciphertext",
                    400,
                    "UNDECRYPTABLE_RESOURCE",
                    _signed(intake, _with_resource(intake, fresh, _tamper_ciphertext)),
                    None,
                ),
                (
                    "wrong APIv3 key",
                    400,
                    "UNDECRYPTABLE_RESOURCE",
                    _signed(intake, json.dumps(wrong_key_resource).encode()),
                    None,
                ),
                ("malformed JSON", 400, "MALFORMED_BODY", _signed(intake, b'{"id": "1", "resource": '), None),
                (
                    "resource missing",
                    400,
                    "MALFORMED_BODY",
                    _signed(intake, _with_resource(intake, fresh, lambda e: e.pop("resource"))),
                    None,
                ),
                (
                    "unsupported event",
                    400,
                    "UNSUPPORTED_EVENT_TYPE",
                    _signed(intake, _with_resource(intake, fresh, lambda e: e.update(event_type="TRANSACTION.CLOSED"))),
                    None,
                ),
                (
                    "resource not an object",
                    400,
                    "MALFORMED_RESOURCE",
                    _signed(intake, _with_resource(intake, fresh, lambda e: e.update(resource=not_an_object))),
                    None,
                ),
                (
                    "resource without amount",
                    400,
                    "MALFORMED_RESOURCE",
                    _signed(intake, resource_with(amount="12345")),
                    None,
                ),
                (
                    "unknown merchant",
                    404,
                    "UNKNOWN_MERCHANT",
                    _signed(intake, good_body),
                    intake.notify_url.rsplit("/", 1)[0] + "/1999999999",
                ),
                (
                    "mchid of another merchant",
                    403,
                    "MERCHANT_MISMATCH",
                    _signed(intake, resource_with(mchid="1900000001")),
                    None,
                ),
                (
                    "trade not paid",
                    400,
                    "TRADE_NOT_SUCCESS",
                    _signed(intake, resource_with(trade_state="NOTPAY")),
                    None,
                ),
                ("negative amount", 400, "INVALID_AMOUNT", _signed(intake, amount(total=-100, payer_total=-100)), None),
                (
                    "absurd amount",
                    400,
                    "INVALID_AMOUNT",
                    _signed(intake, amount(total=10**11, payer_total=10**11)),
                    None,
                ),
                (
                    "payer paid more than total",
                    400,
                    "INVALID_AMOUNT",
                    _signed(intake, amount(payer_total=99_999)),
                    None,
                ),
                ("foreign currency", 400, "UNSUPPORTED_CURRENCY", _signed(intake, amount(currency="USD")), None),
                (
                    "same transaction, other amount",
                    409,
                    "TRANSACTION_CONFLICT",
                    _signed(intake, intake.notification(payment_resource(merchant, paid_txn, total_fen=1))),
                    None,
                ),
            ]
            seen = []
            for name, status, reason, delivery, url in cases:
                got_status, answer = await intake.post(session, delivery, url)
                assert (got_status, answer["code"]) == (status, reason), name
                assert answer["message"], name
                seen.append(reason)

        async with intake.channel() as channel:
            client = stub(channel)
            base = payment_request(merchant, new_transaction_id())
            item = payments_pb2.PaymentItem(
                tax_classification_code="3070401000000000000",
                name="餐饮服务",
                quantity=1,
                unit_price_fen=1,
                amount_fen=1,
            )
            grpc_cases: list[tuple[str, grpc.StatusCode, str, service_pb2.RecordPaymentRequest]] = [
                ("zero amount", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT", _copy(base, amount_fen=0)),
                ("negative amount", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT", _copy(base, amount_fen=-1)),
                (
                    "absurd amount",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_AMOUNT",
                    _copy(base, amount_fen=10**10 + 1),
                ),
                (
                    "payer over total",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_AMOUNT",
                    _copy(base, payer_total_fen=20_000),
                ),
                (
                    "no success time",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_TIME",
                    _copy(base, clear="success_time"),
                ),
                ("items do not add up", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ITEMS", _copy(base, items=[item])),
                (
                    "bad merchant id",
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_MERCHANT_ID",
                    _copy(base, merchant_id="a b"),
                ),
                (
                    "unknown merchant",
                    grpc.StatusCode.NOT_FOUND,
                    "UNKNOWN_MERCHANT",
                    _copy(base, merchant_id="1999999999"),
                ),
                (
                    "conflicting content",
                    grpc.StatusCode.ALREADY_EXISTS,
                    "TRANSACTION_CONFLICT",
                    payment_request(merchant, paid_txn, total_fen=12_344),
                ),
                (
                    "order paid by another transaction",
                    grpc.StatusCode.ALREADY_EXISTS,
                    "OUT_TRADE_NO_CONFLICT",
                    payment_request(merchant, new_transaction_id(), out_trade_no=f"order-{paid_txn}"),
                ),
            ]
            for name, code, reason, request in grpc_cases:
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await client.RecordPayment(request)
                assert (failure.value.code(), reason_of(failure.value)) == (code, reason), name
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await client.GetPayment(service_pb2.GetPaymentRequest(merchant_id=merchant, transaction_id="none"))
            assert reason_of(missing.value) == "PAYMENT_NOT_FOUND"

        # Only the one accepted notification left anything behind.
        assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 1
        assert await intake.count("SELECT count(*) FROM payment_intake.webhook_nonces") == 1
        assert await intake.count("SELECT count(*) FROM payment_intake.outbox WHERE topic = 'payments.v1'") == 1
        events = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=1, timeout_s=10)
        assert len(events) == 1


def _copy(
    request: service_pb2.RecordPaymentRequest, clear: str = "", **changes: Any
) -> service_pb2.RecordPaymentRequest:
    copy = service_pb2.RecordPaymentRequest()
    copy.CopyFrom(request)
    if clear:
        copy.ClearField(clear)
    for name, value in changes.items():
        if name == "items":
            copy.items.extend(value)
        else:
            setattr(copy, name, value)
    return copy


async def test_platform_key_rotation_and_notify_url_without_merchant(stack: StackUnderTest) -> None:
    from fapiao_runtime.db import create_pool
    from payment_intake import merchants

    async with running_intake(stack, FAPIAO_MERCHANT_CACHE_TTL_S="1") as intake, aiohttp.ClientSession() as session:
        new = OTHER_PLATFORM
        body = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
        assert (await intake.post(session, new.deliver(body)))[1]["code"] == "UNKNOWN_SERIAL"
        pool = await create_pool(stack.database_url, "payment_intake", min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                await merchants.add_platform_key(conn, intake.merchant_id, new.serial, new.public_key_pem())
            # The new serial works within a second (an unknown serial refreshes the cache, at most once
            # a second per merchant), the old one too.
            await asyncio.sleep(1.0)
            assert (await intake.post(session, new.deliver(body)))[0] == 200
            other = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
            assert (await intake.post(session, PLATFORM.deliver(other)))[0] == 200
            async with pool.acquire() as conn:
                _, removed = await merchants.remove_platform_key(conn, intake.merchant_id, PLATFORM.serial)
                assert removed
        finally:
            await pool.close()
        # After the cache TTL the retired serial is refused.
        await asyncio.sleep(1.1)
        third = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
        assert (await intake.post(session, PLATFORM.deliver(third)))[1]["code"] == "UNKNOWN_SERIAL"
        # Without the merchant segment the serial identifies the (single) merchant trusting it.
        bare = intake.notify_url.rsplit("/", 1)[0]
        status, answer = await intake.post(session, new.deliver(third), bare)
        assert (status, answer["code"]) == (200, "SUCCESS")
    assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 3


async def test_the_same_signed_request_sent_concurrently_is_recorded_once_and_replays_refused(
    stack: StackUnderTest,
) -> None:
    async with running_intake(stack) as intake, aiohttp.ClientSession() as session:
        body = intake.notification(payment_resource(intake.merchant_id, new_transaction_id()))
        delivery = _signed(intake, body)
        results = await asyncio.gather(*(intake.post(session, delivery) for _ in range(10)))
        assert (
            sorted((status, answer["code"]) for status, answer in results)
            == [(200, "SUCCESS")] + [(409, "REPLAYED_NONCE")] * 9
        )
        # A genuine redelivery (new nonce and timestamp) of the same notification is answered 200.
        assert (await intake.post(session, _signed(intake, body)))[0] == 200
    assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 1
    assert await intake.count("SELECT count(*) FROM payment_intake.webhook_nonces") == 2
