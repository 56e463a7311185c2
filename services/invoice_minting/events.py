"""Consumers' handlers: merchants.v1 (issuer profiles and keys), payments.v1 (offers, refunds).

Each handler runs in the EventConsumer's transaction with the processed-events insert, so an event's
effect is applied exactly once. Raising FapiaoError dead-letters a permanently bad event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import uuid

import asyncpg
from fapiao.common.v1 import envelope_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.errors import InvalidArgument, NotFound
from fapiao_runtime.tax_id import validate_uscc
from fapiao_runtime.vocabulary import claim_token_hash

from invoice_minting import red_letter
from invoice_minting.buyer import check_text
from invoice_minting.deps import MintingDeps
from invoice_minting.invoice_format import REGION_CODE
from invoice_minting.tax import ALLOWED_TAX_RATES_BP, check_payment_items

log = logging.getLogger(__name__)

# 32 random bytes -> 43 URL-safe characters: 256 bits, far above the 128-bit floor.
TOKEN_BYTES = 32
MAX_TEXT_CHARS = 200


def new_claim_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


async def on_merchant_event(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope, deps: MintingDeps) -> None:
    """Upsert the issuer profile; create an issuer key for a new merchant or a changed tax id.

    Raises InvalidArgument (dead letter): INVALID_TAX_ID, INVALID_REGION_CODE, INVALID_TAX_RATE, INVALID_MERCHANT.
    """
    event = unpack(envelope, payments_pb2.MerchantRegistered)
    if not event.merchant_id or not event.legal_name or not event.default_tax_classification_code:
        raise InvalidArgument("INVALID_MERCHANT", "merchant_id, legal_name and a default classification are required")
    for text in (event.merchant_id, event.legal_name, event.default_item_name, event.default_tax_classification_code):
        check_text(text, "merchant field")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidArgument("INVALID_MERCHANT", "merchant field too long")
    tax_id = validate_uscc(event.tax_id)
    if not REGION_CODE.fullmatch(event.region_code):
        raise InvalidArgument("INVALID_REGION_CODE", "region_code must be 2 digits")
    if event.default_tax_rate_bp not in ALLOWED_TAX_RATES_BP:
        raise InvalidArgument("INVALID_TAX_RATE", "default tax rate not allowed")
    previous = await conn.fetchval("SELECT tax_id FROM merchants WHERE merchant_id = $1 FOR UPDATE", event.merchant_id)
    await conn.execute(
        "INSERT INTO merchants AS m (merchant_id, legal_name, tax_id, region_code, default_tax_classification_code,"
        " default_item_name, default_tax_rate_bp) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (merchant_id) DO UPDATE SET legal_name = EXCLUDED.legal_name, tax_id = EXCLUDED.tax_id,"
        " region_code = EXCLUDED.region_code,"
        " default_tax_classification_code = EXCLUDED.default_tax_classification_code,"
        " default_item_name = EXCLUDED.default_item_name, default_tax_rate_bp = EXCLUDED.default_tax_rate_bp,"
        " updated_at = now()",
        event.merchant_id,
        event.legal_name,
        tax_id,
        event.region_code,
        event.default_tax_classification_code,
        event.default_item_name or event.legal_name,
        event.default_tax_rate_bp,
    )
    if previous != tax_id:
        # A key registration names the seller's tax id, so a changed tax id needs a new key.
        await deps.keys.create_key(conn, event.merchant_id, tax_id)


_PAYMENT_SUCCEEDED = payments_pb2.PaymentSucceeded.DESCRIPTOR.full_name
OFFERS_CHANNEL = "fapiao_claim_offers"
_OFFER_COLUMNS = (
    ("offer_id", "uuid"),
    ("payment_id", "text"),
    ("merchant_id", "text"),
    ("token_hash", "bytea"),
    ("token_sealed", "bytea"),
    ("amount_fen", "bigint"),
    ("payment", "bytea"),
    ("paid_at", "timestamptz"),
)
# Offers from arrays (one per column), expiring after $9 seconds; each new one is announced on
# OFFERS_CHANNEL at commit, which wakes GetClaimOfferByPayment calls waiting for it (any replica).
# A payment that already has an offer keeps it.
_INSERT_OFFERS = (
    "WITH inserted AS (INSERT INTO claim_offers ("
    + ", ".join(name for name, _ in _OFFER_COLUMNS)
    + ", expires_at) SELECT *, now() + make_interval(secs => $9) FROM unnest("
    + ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(_OFFER_COLUMNS, 1))
    + ") ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id)"
    " SELECT payment_id, pg_notify($10, payment_id) FROM inserted"
)


async def on_payment_event(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope, deps: MintingDeps) -> None:
    if envelope.event_type == _PAYMENT_SUCCEEDED:
        await create_offer(conn, unpack(envelope, payments_pb2.PaymentSucceeded).payment, deps)
    elif envelope.event_type == payments_pb2.PaymentRefunded.DESCRIPTOR.full_name:
        await apply_refund(conn, unpack(envelope, payments_pb2.PaymentRefunded), deps)
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
    await _insert_offers(conn, [_new_offer(p, deps) for p in payments], deps)


def _new_offer(payment: payments_pb2.Payment, deps: MintingDeps) -> tuple[str, tuple[object, ...]]:
    """A new claim token and the claim_offers row of a payment (values in _OFFER_COLUMNS order).

    Raises InvalidArgument (dead letter): INVALID_PAYMENT, INVALID_AMOUNT, AMOUNT_MISMATCH, INVALID_TAX_RATE, ...
    """
    if not payment.payment_id or not payment.merchant_id:
        raise InvalidArgument("INVALID_PAYMENT", "payment_id and merchant_id are required")
    check_payment_items(payment.amount_fen, payment.items)
    for item in payment.items:
        check_text(item.name, "item name")
        check_text(item.tax_classification_code, "tax classification code")
        if len(item.name) > MAX_TEXT_CHARS or len(item.tax_classification_code) > MAX_TEXT_CHARS:
            raise InvalidArgument("INVALID_PAYMENT", f"item texts are limited to {MAX_TEXT_CHARS} characters")
    paid_at = (
        payment.success_time.ToDatetime(tzinfo=dt.UTC) if payment.HasField("success_time") else dt.datetime.now(dt.UTC)
    )
    token = new_claim_token()
    offer_id = uuid.uuid4()
    row = (
        offer_id,
        payment.payment_id,
        payment.merchant_id,
        claim_token_hash(token),
        deps.box.seal(token.encode(), offer_id.bytes),
        payment.amount_fen,
        payment.SerializeToString(deterministic=True),
        paid_at,
    )
    return token, row


async def _insert_offers(
    conn: asyncpg.Connection, offers: list[tuple[str, tuple[object, ...]]], deps: MintingDeps
) -> set[str]:
    """Insert new offers (from _new_offer); return the payment ids that got theirs now."""
    columns = [list(column) for column in zip(*(row for _, row in offers), strict=True)]
    inserted = await conn.fetch(_INSERT_OFFERS, *columns, float(deps.settings.offer_ttl_s), OFFERS_CHANNEL)
    return {r["payment_id"] for r in inserted}


async def create_offer(conn: asyncpg.Connection, payment: payments_pb2.Payment, deps: MintingDeps) -> str | None:
    """Create the claim offer of a payment; return its token (None if the payment already has an offer).

    Raises InvalidArgument (dead letter): INVALID_PAYMENT, INVALID_AMOUNT, AMOUNT_MISMATCH, INVALID_TAX_RATE, ...
    """
    token, row = _new_offer(payment, deps)
    inserted = await _insert_offers(conn, [(token, row)], deps)
    return token if inserted else None


async def apply_refund(conn: asyncpg.Connection, event: payments_pb2.PaymentRefunded, deps: MintingDeps) -> None:
    """Before the claim: remember the refunded total (a full refund voids the offer). After: red letter.

    Raises NotFound(OFFER_NOT_FOUND) or the red letter's errors (dead letter).
    """
    refund = event.refund
    if refund.refund_fen <= 0:
        raise InvalidArgument("INVALID_AMOUNT", "refund_fen must be positive")
    offer = await conn.fetchrow(
        "SELECT offer_id, merchant_id, amount_fen, refunded_fen, invoice_id FROM claim_offers WHERE payment_id = $1"
        " FOR UPDATE",
        refund.payment_id,
    )
    if offer is None:
        raise NotFound("OFFER_NOT_FOUND", "no offer for the refunded payment")
    if offer["invoice_id"] is None:
        refunded = min(offer["amount_fen"], max(event.payment.refunded_fen, offer["refunded_fen"] + refund.refund_fen))
        await conn.execute("UPDATE claim_offers SET refunded_fen = $2 WHERE offer_id = $1", offer["offer_id"], refunded)
        return
    await red_letter.reverse(
        conn,
        deps,
        merchant_id=offer["merchant_id"],
        invoice_id=offer["invoice_id"],
        amount_fen=refund.refund_fen,
        reason="SALES_RETURN",
        idempotency_key=f"refund:{refund.refund_id}",
        request_hash=hashlib.sha256(refund.SerializeToString(deterministic=True)).digest(),
        now=dt.datetime.now(dt.UTC),
    )
