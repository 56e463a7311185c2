"""What payment_intake publishes (it consumes no topic): PaymentSucceeded and PaymentRefunded on
payments.v1, MerchantRegistered on merchants.v1.

Each event is queued through the outbox in the transaction that records its change. Event ids are
derived from what the event is about, so a redelivered notification or a re-run registration makes
the same event, which consumers deduplicate.
"""

from __future__ import annotations

import hashlib
import uuid

from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import OutgoingEvent, make_envelope, outgoing
from fapiao_runtime.topics import MERCHANTS, PAYMENTS

from payment_intake.domain import ID_NAMESPACE, aggregate_id, payment_event_id, refund_event_id

PRODUCER = "payment_intake"


def payment_succeeded(
    payment: payments_pb2.Payment, payment_id: uuid.UUID, *, traceparent: str | None = None
) -> OutgoingEvent:
    """Keyed by (merchant, out_trade_no): one order's events stay in order. `traceparent`: the trace of
    the request that reported the payment (batched requests each keep their own); by default the
    current one."""
    envelope = make_envelope(
        payments_pb2.PaymentSucceeded(payment=payment),
        aggregate_id=aggregate_id(payment.merchant_id, payment.out_trade_no),
        producer=PRODUCER,
        event_id=payment_event_id(payment_id),
        traceparent=traceparent,
    )
    return outgoing(PAYMENTS.name, envelope)


def payment_refunded(refund: payments_pb2.Refund, payment: payments_pb2.Payment, merchant_id: str) -> OutgoingEvent:
    """Keyed like the payment's PaymentSucceeded, so it follows it."""
    envelope = make_envelope(
        payments_pb2.PaymentRefunded(refund=refund, payment=payment),
        aggregate_id=aggregate_id(merchant_id, payment.out_trade_no),
        producer=PRODUCER,
        event_id=refund_event_id(merchant_id, refund.refund_id),
    )
    return outgoing(PAYMENTS.name, envelope)


def merchant_registered(event: payments_pb2.MerchantRegistered) -> OutgoingEvent:
    """Same profile, same event id: re-running a registration is deduplicated downstream."""
    digest = hashlib.sha256(event.SerializeToString(deterministic=True)).hexdigest()
    envelope = make_envelope(
        event,
        aggregate_id=event.merchant_id,
        producer=PRODUCER,
        event_id=uuid.uuid5(ID_NAMESPACE, f"merchant-registered/{event.merchant_id}/{digest}"),
    )
    return outgoing(MERCHANTS.name, envelope)
