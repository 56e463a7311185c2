"""PaymentIntakeService under hostile requests: out-of-range timestamps, ids with a trailing newline or a
NUL. The real servicer behind the runtime's GrpcServer; handlers that apply the real domain rules."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import InvalidArgument, NotFound
from fapiao_runtime.grpc_server import GrpcServer
from google.protobuf.timestamp_pb2 import Timestamp
from payment_intake import domain, store
from payment_intake.grpc_api import PaymentIntakeServicer, payment_command

from tests.payment_intake.support import new_transaction_id, payment_request

pytestmark = pytest.mark.unit

MERCHANT = "1230000109"
NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


class _Handlers:
    """IntakeHandlers' validation (the real domain rules); records what passed it instead of storing."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def record_payment(self, cmd: domain.RecordPayment) -> store.PaymentOutcome:
        domain.validate_payment(cmd)
        self.calls.append(cmd)
        return store.PaymentOutcome(payments_pb2.Payment(merchant_id=cmd.merchant_id), duplicate=False)

    async def record_refund(self, cmd: domain.RecordRefund) -> store.RefundOutcome:
        domain.validate_refund(cmd)
        self.calls.append(cmd)
        return store.RefundOutcome(payments_pb2.Refund(refund_id=cmd.refund_id), payments_pb2.Payment(), False)

    async def get_payment(self, merchant_id: str, transaction_id: str) -> payments_pb2.Payment:
        self.calls.append((merchant_id, transaction_id))
        raise NotFound("PAYMENT_NOT_FOUND", "no payment with this merchant_id and transaction_id")


@pytest.fixture
async def intake() -> AsyncIterator[tuple[service_grpc.PaymentIntakeServiceStub, _Handlers]]:
    handlers = _Handlers()
    server = GrpcServer([service_pb2.DESCRIPTOR.services_by_name["PaymentIntakeService"].full_name])
    servicer = PaymentIntakeServicer(handlers, secrets.token_bytes(32))  # type: ignore[arg-type]
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, servicer)
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield service_grpc.PaymentIntakeServiceStub(channel), handlers
    finally:
        await server.stop(0)


def _stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


OUT_OF_RANGE = [
    _stamp(1_763_000_000, 10**9),  # nanos one past the largest
    _stamp(1_763_000_000, -1),
    _stamp(253_402_300_800),  # the first second of year 10000
    _stamp(-62_135_596_801),  # the last second before year 1
    _stamp(2**62),
]


def _reason(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("fapiao-reason", "")  # type: ignore[arg-type, return-value]


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize("stamp", OUT_OF_RANGE, ids=lambda s: f"{s.seconds}s{s.nanos}ns")
async def test_a_timestamp_out_of_range_is_invalid_time_in_record_payment_and_record_refund(
    intake: tuple[service_grpc.PaymentIntakeServiceStub, _Handlers], stamp: Timestamp
) -> None:
    stub, handlers = intake
    payment = payment_request(MERCHANT, new_transaction_id())
    payment.success_time.CopyFrom(stamp)
    refund = service_pb2.RecordRefundRequest(
        merchant_id=MERCHANT, transaction_id=new_transaction_id(), refund_id="r-1", refund_fen=100, refund_time=stamp
    )
    for call in (stub.RecordPayment(payment), stub.RecordRefund(refund)):
        error = await _refused(call)
        assert (error.code(), _reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIME")
    assert handlers.calls == []


async def test_a_nul_in_an_id_never_reaches_the_database(
    intake: tuple[service_grpc.PaymentIntakeServiceStub, _Handlers],
) -> None:
    stub, handlers = intake
    for request_ in (
        service_pb2.GetPaymentRequest(merchant_id=MERCHANT, transaction_id="4200\x00"),
        service_pb2.GetPaymentRequest(merchant_id="\x00" + MERCHANT, transaction_id="4200"),
    ):
        error = await _refused(stub.GetPayment(request_))
        assert (error.code(), _reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS")
    assert handlers.calls == []
    error = await _refused(stub.GetPayment(service_pb2.GetPaymentRequest(merchant_id=MERCHANT, transaction_id="4200")))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # the same request without the NUL is looked up


async def test_a_valid_payment_still_passes(intake: tuple[service_grpc.PaymentIntakeServiceStub, _Handlers]) -> None:
    stub, handlers = intake
    reply = await stub.RecordPayment(payment_request(MERCHANT, new_transaction_id()))
    assert reply.payment.merchant_id == MERCHANT
    assert len(handlers.calls) == 1


def _item(tax_classification_code: str) -> payments_pb2.PaymentItem:
    """The one item of a 12,345 fen payment (payment_request's amount)."""
    return payments_pb2.PaymentItem(
        tax_classification_code=tax_classification_code,
        name="tea",
        quantity=1,
        unit_price_fen=12_345,
        amount_fen=12_345,
        tax_rate_bp=600,
    )


def _command(**changes: Any) -> domain.RecordPayment:
    cmd = payment_command(payment_request(MERCHANT, new_transaction_id()), secrets.token_bytes(32))
    return replace(cmd, **changes)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"merchant_id": "m" * 31 + "\n"}, "INVALID_MERCHANT_ID"),
        ({"transaction_id": "4" * 63 + "\n"}, "INVALID_TRANSACTION_ID"),
        ({"out_trade_no": "order-1\n"}, "INVALID_OUT_TRADE_NO"),
        ({"items": (_item("3070401000000000000\n"),)}, "INVALID_ITEMS"),
        ({"appid": "wx\u202e1"}, "INVALID_ARGUMENT"),  # an invisible bidi override, not only control characters
    ],
)
def test_whole_string_patterns_refuse_a_trailing_newline(changes: dict[str, Any], reason: str) -> None:
    """The webhook hands its commands to the same rules, so they hold without the gRPC edge too."""
    domain.validate_payment(_command(items=(_item("3070401000000000000"),)), now=NOW)  # the valid twin
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_payment(_command(**changes), now=NOW)
    assert caught.value.reason == reason


def test_a_refund_id_with_a_trailing_newline_is_refused() -> None:
    refund = domain.RecordRefund(MERCHANT, "4200", "r-1\n", 100, NOW)
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_refund(refund, now=NOW)
    assert caught.value.reason == "INVALID_REFUND_ID"
