"""gRPC entry point: PaymentIntakeService. Parses requests into commands; handlers do the work."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import InvalidArgument
from google.protobuf.timestamp_pb2 import Timestamp

from payment_intake.domain import CURRENCY, RecordPayment, RecordRefund
from payment_intake.handlers import IntakeHandlers
from payment_intake.sealing import payer_ref

SERVICE_NAME = "fapiao.payments.v1.PaymentIntakeService"


def _time(stamp: Timestamp, name: str, *, default_now: bool = False) -> datetime:
    """The request Timestamp as a time zone aware datetime; INVALID_TIME when unset (unless
    `default_now`) or outside what a Timestamp may hold (nanos 0..999,999,999, years 1..9999)."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        if default_now:
            return datetime.now(UTC)
        raise InvalidArgument("INVALID_TIME", f"{name} is required")
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument("INVALID_TIME", f"{name} is not a valid timestamp") from None


def payment_command(request: service_pb2.RecordPaymentRequest, payer_hash_key: bytes) -> RecordPayment:
    """Map a request to a command. Unset currency means CNY; the openid is replaced by its keyed hash."""
    return RecordPayment(
        merchant_id=request.merchant_id,
        transaction_id=request.transaction_id,
        out_trade_no=request.out_trade_no,
        amount_fen=request.amount_fen,
        payer_total_fen=request.payer_total_fen,
        currency=request.currency or CURRENCY,
        success_time=_time(request.success_time, "success_time"),
        payer_ref=payer_ref(payer_hash_key, request.payer_openid),
        appid=request.appid,
        trade_type=request.trade_type,
        items=tuple(request.items),
        source=payments_pb2.PAYMENT_SOURCE_GRPC,
    )


class PaymentIntakeServicer(service_grpc.PaymentIntakeServiceServicer):
    def __init__(self, handlers: IntakeHandlers, payer_hash_key: bytes) -> None:
        self._handlers = handlers
        self._payer_hash_key = payer_hash_key

    async def RecordPayment(
        self, request: service_pb2.RecordPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordPaymentResponse:
        outcome = await self._handlers.record_payment(payment_command(request, self._payer_hash_key))
        return service_pb2.RecordPaymentResponse(payment=outcome.payment, duplicate=outcome.duplicate)

    async def RecordRefund(
        self, request: service_pb2.RecordRefundRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordRefundResponse:
        cmd = RecordRefund(
            merchant_id=request.merchant_id,
            transaction_id=request.transaction_id,
            refund_id=request.refund_id,
            refund_fen=request.refund_fen,
            refund_time=_time(request.refund_time, "refund_time", default_now=True),
            reason=request.reason,
        )
        outcome = await self._handlers.record_refund(cmd)
        return service_pb2.RecordRefundResponse(
            refund=outcome.refund, payment=outcome.payment, duplicate=outcome.duplicate
        )

    async def GetPayment(
        self, request: service_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetPaymentResponse:
        payment = await self._handlers.get_payment(request.merchant_id, request.transaction_id)
        return service_pb2.GetPaymentResponse(payment=payment)
