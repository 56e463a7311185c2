"""Payment and refund commands: validation, deterministic ids and content fingerprints (pure functions).

Both entry points (gRPC and the webhook) turn their input into these commands; handlers never see
transport types. Every rule here raises InvalidArgument with its own reason and changes nothing.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fapiao.payments.v1 import payments_pb2
from fapiao_runtime import tracing
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.tax_rates import NATIONAL_VAT_RATES_BP
from fapiao_runtime.text import bad_character

MAX_AMOUNT_FEN = 10**10  # 100 million yuan: far above any single retail payment
MAX_ITEMS = 100
CURRENCY = "CNY"
# Fixed namespace so payment, refund and event ids are the same on every replica and every retry.
ID_NAMESPACE = uuid.UUID("6f1d8a52-3c4b-5e7f-9a0b-1c2d3e4f5a6b")
# Whole-string patterns (fullmatch: `$` would also match before a final newline).
_MERCHANT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_PLATFORM_ID = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces
_TAX_CODE = re.compile(r"[0-9]{19}")
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_FUTURE_TOLERANCE = timedelta(days=1)


@dataclass(frozen=True)
class RecordPayment:
    merchant_id: str
    transaction_id: str
    out_trade_no: str
    amount_fen: int
    payer_total_fen: int
    currency: str
    success_time: datetime
    payer_ref: str
    appid: str = ""
    trade_type: str = ""
    items: tuple[payments_pb2.PaymentItem, ...] = field(default=())
    source: int = payments_pb2.PAYMENT_SOURCE_GRPC
    # The trace of the request that made the command; its event carries it though written by a batch.
    traceparent: str = field(default_factory=tracing.current, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.merchant_id, self.transaction_id)


@dataclass(frozen=True)
class RecordRefund:
    merchant_id: str
    transaction_id: str
    refund_id: str
    refund_fen: int
    refund_time: datetime
    reason: str = ""


def payment_id_for(merchant_id: str, transaction_id: str) -> uuid.UUID:
    return uuid.uuid5(ID_NAMESPACE, f"payment/{merchant_id}/{transaction_id}")


def payment_event_id(payment_id: uuid.UUID) -> uuid.UUID:
    """PaymentSucceeded's event id: a redelivered notification can never make a second event."""
    return uuid.uuid5(ID_NAMESPACE, f"payment-succeeded/{payment_id}")


def refund_event_id(merchant_id: str, refund_id: str) -> uuid.UUID:
    return uuid.uuid5(ID_NAMESPACE, f"payment-refunded/{merchant_id}/{refund_id}")


def aggregate_id(merchant_id: str, out_trade_no: str) -> str:
    return f"{merchant_id}:{out_trade_no}"


def _micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def payment_fingerprint(cmd: RecordPayment) -> bytes:
    """SHA-256 over the facts a retry must repeat exactly: order, amounts, currency, time, payer.

    Transport (gRPC vs webhook), appid, trade type and items are enrichment and may differ between
    deliveries of the same payment; the money facts may not.
    """
    canonical = "\x1f".join(
        [
            cmd.merchant_id,
            cmd.transaction_id,
            cmd.out_trade_no,
            str(cmd.amount_fen),
            str(cmd.payer_total_fen),
            cmd.currency,
            str(_micros(cmd.success_time)),
            cmd.payer_ref,
        ]
    )
    return hashlib.sha256(canonical.encode()).digest()


def refund_fingerprint(cmd: RecordRefund) -> bytes:
    canonical = "\x1f".join([cmd.merchant_id, cmd.transaction_id, cmd.refund_id, str(cmd.refund_fen)])
    return hashlib.sha256(canonical.encode()).digest()


def _check_merchant_id(merchant_id: str) -> None:
    if not _MERCHANT_ID.fullmatch(merchant_id):
        raise InvalidArgument("INVALID_MERCHANT_ID", "merchant_id must be 1-32 of [A-Za-z0-9_-]")


def _check_platform_id(name: str, value: str) -> None:
    if not _PLATFORM_ID.fullmatch(value):
        raise InvalidArgument(f"INVALID_{name.upper()}", f"{name} must be 1-64 printable ASCII characters")


def _check_text(name: str, value: str, max_length: int) -> None:
    """Free text a platform sends (names, reasons, app ids): one line, none of the characters
    `fapiao_runtime.text.bad_character` names (PostgreSQL's text refuses NUL; no invoice should carry
    control or invisible characters)."""
    if len(value) > max_length or bad_character(value) is not None:
        raise InvalidArgument(
            "INVALID_ARGUMENT", f"{name} must be at most {max_length} characters without control characters"
        )


def _check_amount(name: str, value: int) -> None:
    if not 0 < value <= MAX_AMOUNT_FEN:
        raise InvalidArgument("INVALID_AMOUNT", f"{name} must be between 1 and {MAX_AMOUNT_FEN} fen")


def _check_time(name: str, moment: datetime, now: datetime) -> None:
    if moment.tzinfo is None or not _EARLIEST <= moment <= now + _FUTURE_TOLERANCE:
        raise InvalidArgument("INVALID_TIME", f"{name} must be a time zone aware time between 2000 and now")


def _check_items(items: tuple[payments_pb2.PaymentItem, ...], amount_fen: int) -> None:
    if len(items) > MAX_ITEMS:
        raise InvalidArgument("INVALID_ITEMS", f"at most {MAX_ITEMS} items")
    total = 0
    for index, item in enumerate(items):
        if not _TAX_CODE.fullmatch(item.tax_classification_code):
            raise InvalidArgument("INVALID_ITEMS", f"item {index}: tax_classification_code must be 19 digits")
        if not item.name or len(item.name) > 100 or bad_character(item.name) is not None:
            raise InvalidArgument(
                "INVALID_ITEMS", f"item {index}: name must be 1-100 characters without control characters"
            )
        if item.quantity <= 0 or item.unit_price_fen <= 0 or item.quantity * item.unit_price_fen != item.amount_fen:
            raise InvalidArgument("INVALID_ITEMS", f"item {index}: amount_fen must equal quantity * unit_price_fen > 0")
        if item.tax_rate_bp not in NATIONAL_VAT_RATES_BP:
            raise InvalidArgument("INVALID_ITEMS", f"item {index}: tax_rate_bp must be a national VAT rate")
        total += item.amount_fen
    if items and total != amount_fen:
        raise InvalidArgument("INVALID_ITEMS", "item amounts must add up to amount_fen")


def validate_payment(cmd: RecordPayment, now: datetime | None = None) -> RecordPayment:
    """Return `cmd` if every field is plausible; raise InvalidArgument with a precise reason otherwise."""
    now = now or datetime.now(UTC)
    _check_merchant_id(cmd.merchant_id)
    _check_platform_id("transaction_id", cmd.transaction_id)
    _check_platform_id("out_trade_no", cmd.out_trade_no)
    _check_amount("amount_fen", cmd.amount_fen)
    if not 0 <= cmd.payer_total_fen <= cmd.amount_fen:
        raise InvalidArgument("INVALID_AMOUNT", "payer_total_fen must be within 0..amount_fen")
    if cmd.currency != CURRENCY:
        raise InvalidArgument("UNSUPPORTED_CURRENCY", f"only {CURRENCY} (amounts in fen) is supported")
    _check_time("success_time", cmd.success_time, now)
    _check_text("appid", cmd.appid, 64)
    _check_text("trade_type", cmd.trade_type, 32)
    _check_items(cmd.items, cmd.amount_fen)
    return cmd


def validate_refund(cmd: RecordRefund, now: datetime | None = None) -> RecordRefund:
    """Return `cmd` if plausible; whether it fits the payment is decided under the payment's row lock."""
    now = now or datetime.now(UTC)
    _check_merchant_id(cmd.merchant_id)
    _check_platform_id("transaction_id", cmd.transaction_id)
    _check_platform_id("refund_id", cmd.refund_id)
    _check_amount("refund_fen", cmd.refund_fen)
    _check_time("refund_time", cmd.refund_time, now)
    _check_text("reason", cmd.reason, 200)
    return cmd


def payment_status(amount_fen: int, refunded_fen: int) -> int:
    if refunded_fen == 0:
        return payments_pb2.PAYMENT_STATUS_SUCCEEDED
    if refunded_fen < amount_fen:
        return payments_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED
    return payments_pb2.PAYMENT_STATUS_REFUNDED
