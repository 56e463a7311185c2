"""Red-letter invoices (红字发票): full cancellation or partial reversal of an issued invoice.

A red letter is a new invoice with its own number (same region counter), negative lines and totals,
the original's number and a reason code. It travels to the ledger inside a CANCEL transaction (when it
reverses everything still reimbursable) or a PARTIAL_RED_LETTER transaction, keyed by the ORIGINAL
invoice id so the ledger orders it after the ISSUE. The reimbursable amount is lowered at once (so two
concurrent requests cannot reverse more than the invoice) and restored if the ledger rejects it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

from invoice_minting.deps import MintingDeps
from invoice_minting.invoice_format import beijing_date, invoice_number, issue_date_text
from invoice_minting.signing import build_body, red_letter_submission, sign_invoice
from invoice_minting.store import MintingStore, NewInvoice
from invoice_minting.tax import red_letter_lines

# Reason codes of WeChat Pay's fapiao reverse API.
RED_LETTER_REASONS = frozenset({"ISSUE_ERROR", "SALES_RETURN", "SERVICE_SUSPENSION", "SALES_DISCOUNT"})


def request_hash(invoice_number_text: str, amount_fen: int, reason: str) -> bytes:
    return hashlib.sha256(f"{invoice_number_text}|{amount_fen}|{reason}".encode()).digest()


async def _replay(
    store: MintingStore, merchant_id: str, idempotency_key: str, request_hash_value: bytes
) -> tuple[invoice_pb2.Invoice, invoice_pb2.Invoice] | None:
    row = await store.red_letter_request(merchant_id, idempotency_key)
    if row is None:
        return None
    if row["request_hash"] != request_hash_value:
        raise AlreadyExists("IDEMPOTENCY_CONFLICT", "idempotency_key was used for a different red letter")
    found = await store.invoices_by_id([row["red_letter_invoice_id"], row["original_invoice_id"]])
    return found[row["red_letter_invoice_id"]], found[row["original_invoice_id"]]


async def reverse(
    store: MintingStore,
    deps: MintingDeps,
    *,
    merchant_id: str,
    amount_fen: int,
    reason: str,
    idempotency_key: str,
    request_hash: bytes,
    now: dt.datetime,
    invoice_id: uuid.UUID | None = None,
    invoice_number_text: str = "",
) -> tuple[invoice_pb2.Invoice, invoice_pb2.Invoice]:
    """Issue a red letter against an invoice of `merchant_id` (by id or number) inside the store's transaction.

    amount_fen 0 means everything still reimbursable. Returns (red letter, original). A repeated
    idempotency key returns the first result. Raises InvalidArgument INVALID_REASON / INVALID_AMOUNT /
    AMOUNT_EXCEEDS_REMAINING, NotFound INVOICE_NOT_FOUND, PermissionDenied NOT_INVOICE_SELLER,
    FailedPrecondition NOT_AN_ORDINARY_INVOICE / INVOICE_REJECTED / ALREADY_CANCELLED / ISSUER_KEY_MISSING,
    AlreadyExists IDEMPOTENCY_CONFLICT.
    """
    if reason not in RED_LETTER_REASONS:
        raise InvalidArgument("INVALID_REASON", "reason must be one of " + ", ".join(sorted(RED_LETTER_REASONS)))
    if amount_fen < 0:
        raise InvalidArgument("INVALID_AMOUNT", "amount_fen must not be negative")
    # Requests with one key wait for each other (until the first commits), so a concurrent retry
    # returns the first result instead of failing on the key's unique index.
    await store.lock_red_letter_key(merchant_id, idempotency_key)
    replay = await _replay(store, merchant_id, idempotency_key, request_hash)
    if replay is not None:
        return replay
    row = await store.lock_invoice(invoice_id=invoice_id, invoice_number=invoice_number_text)
    if row is None:
        raise NotFound("INVOICE_NOT_FOUND", "no such invoice")
    if row["merchant_id"] != merchant_id:
        raise PermissionDenied("NOT_INVOICE_SELLER", "only the seller may red-letter an invoice")
    if row["kind"] != invoice_pb2.INVOICE_KIND_ORDINARY:
        raise FailedPrecondition("NOT_AN_ORDINARY_INVOICE", "a red letter cannot be reversed")
    if row["status"] == invoice_pb2.INVOICE_STATUS_REJECTED:
        raise FailedPrecondition("INVOICE_REJECTED", "the ledger rejected this invoice")
    remaining = row["reimbursable_fen"]
    if row["status"] == invoice_pb2.INVOICE_STATUS_CANCELLED or remaining == 0:
        raise FailedPrecondition("ALREADY_CANCELLED", "nothing is left to reverse on this invoice")
    amount = amount_fen or remaining
    if amount > remaining:
        raise InvalidArgument("AMOUNT_EXCEEDS_REMAINING", f"at most {remaining} fen can still be reversed")
    original = invoice_pb2.SignedInvoice.FromString(row["signed"])
    original_body = invoice_pb2.InvoiceBody.FromString(original.body)
    earlier = [body.lines for body in await store.counting_red_letters(row["invoice_id"])]
    key = await deps.keys.signing_key_for_seller(store, merchant_id, original_body.seller.tax_id)
    if key is None:
        raise FailedPrecondition("ISSUER_KEY_MISSING", "no issuer key registered for the invoice's seller")
    day = beijing_date(now)
    sequence = await store.allocate_sequences(original_body.region_code, day.year, 1)
    red_id = uuid.uuid4()
    body = build_body(
        invoice_id=red_id,
        invoice_number=invoice_number(day.year, original_body.region_code, deps.settings.channel, sequence),
        kind=invoice_pb2.INVOICE_KIND_RED_LETTER,
        seller=original_body.seller,
        buyer=original_body.buyer,
        lines=red_letter_lines(original_body.lines, amount, earlier),
        issue_date=issue_date_text(day),
        merchant_id=merchant_id,
        payment_id=original_body.payment_id,
        region_code=original_body.region_code,
        original_invoice_number=original_body.invoice_number,
        red_letter_reason=reason,
    )
    signed = sign_invoice(body, key)
    transaction_id, tx_type, event = red_letter_submission(
        row["invoice_id"],
        signed,
        full=amount == remaining,
        amount_fen=amount,
        reason=reason,
        key=key,
        producer=deps.producer,
    )
    await store.insert_invoices(
        [NewInvoice(red_id, body, signed, row["invoice_id"], transaction_id, tx_type, row["invoice_id"], amount)]
    )
    await store.lower_reimbursable(row["invoice_id"], amount)
    await store.record_red_letter_request(merchant_id, idempotency_key, request_hash, red_id)
    await store.enqueue([event])
    found = await store.invoices_by_id([red_id, row["invoice_id"]])
    return found[red_id], found[row["invoice_id"]]
