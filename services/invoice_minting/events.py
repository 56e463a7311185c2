"""Kafka entry points of invoice_minting: decode each consumed event and hand it to its handler.

- merchants.v1 MerchantRegistered → handlers.register_merchant
- payments.v1 PaymentSucceeded → handlers.create_offers / create_offer; PaymentRefunded → handlers.apply_refund
- ledger.results.v1 TransactionResult → handlers.apply_ledger_results

Each runs in the EventConsumer's transaction with the processed-events insert, so an event's effect is
applied exactly once. A handler's FapiaoError dead-letters a permanently bad event.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg
from fapiao.common.v1 import envelope_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.ledger_client import result_event_id

from invoice_minting import handlers
from invoice_minting.deps import MintingDeps
from invoice_minting.store import MintingStore

log = logging.getLogger(__name__)

_PAYMENT_SUCCEEDED = payments_pb2.PaymentSucceeded.DESCRIPTOR.full_name
_PAYMENT_REFUNDED = payments_pb2.PaymentRefunded.DESCRIPTOR.full_name


async def on_merchant_event(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope, deps: MintingDeps) -> None:
    await handlers.register_merchant(MintingStore(conn), unpack(envelope, payments_pb2.MerchantRegistered), deps)


async def on_payment_event(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope, deps: MintingDeps) -> None:
    store = MintingStore(conn)
    if envelope.event_type == _PAYMENT_SUCCEEDED:
        await handlers.create_offer(store, unpack(envelope, payments_pb2.PaymentSucceeded).payment, deps)
    elif envelope.event_type == _PAYMENT_REFUNDED:
        await handlers.apply_refund(store, unpack(envelope, payments_pb2.PaymentRefunded), deps)
    else:
        log.info("ignoring payments event", extra={"event_type": envelope.event_type})


async def on_payment_events(
    conn: asyncpg.Connection, envelopes: list[envelope_pb2.EventEnvelope], deps: MintingDeps
) -> None:
    """on_payment_event for a fetched batch: the offers of successful payments in one statement.

    A batch with any other event (a refund must follow its payment's offer) is applied event by event.
    """
    if any(e.event_type != _PAYMENT_SUCCEEDED for e in envelopes):
        for envelope in envelopes:
            await on_payment_event(conn, envelope, deps)
        return
    payments = [unpack(e, payments_pb2.PaymentSucceeded).payment for e in envelopes]
    await handlers.create_offers(MintingStore(conn), payments, deps)


async def on_result(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope, producer: str) -> None:
    await on_results(conn, [envelope], producer)


async def on_results(conn: asyncpg.Connection, envelopes: list[envelope_pb2.EventEnvelope], producer: str) -> None:
    """Ledger results (one, or a fetched batch): the first result of each transaction decides it.

    The rejection of a record whose signature was never verified (published under another event id)
    decides nothing: anyone able to write to the ledger topic could make one with a copied id.
    """
    decided: dict[uuid.UUID, ledger_pb2.TransactionResult] = {}
    for envelope in envelopes:
        result = unpack(envelope, ledger_pb2.TransactionResult)
        try:
            transaction_id = uuid.UUID(result.transaction_id)
        except ValueError:
            continue
        if envelope.event_id != str(result_event_id(result.transaction_id)):
            log.warning(
                "ignoring the result of an unverified ledger record", extra={"transaction_id": str(transaction_id)}
            )
            continue
        # Copies of a result share an event id and arrive once.
        decided.setdefault(transaction_id, result)
    if decided:
        await handlers.apply_ledger_results(MintingStore(conn), decided, producer)
