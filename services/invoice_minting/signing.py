"""Building, signing and submitting invoices: sign bytes, ship bytes.

The issuer signs the exact deterministic serialization of an InvoiceBody; SignedInvoice carries those
bytes with the signature, and verifiers check the shipped bytes (never a re-serialization).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import OutgoingEvent
from fapiao_runtime.ledger_client import ED25519, SigningKey, sign_transaction, transaction_event
from fapiao_runtime.ledger_trust import ed25519_verify
from google.protobuf.timestamp_pb2 import Timestamp

from invoice_minting.invoice_format import verification_qr
from invoice_minting.tax import totals_of


def red_letter_reason_code(reason: str) -> invoice_pb2.RedLetterReason.ValueType:
    """The RedLetterReason of a reason code ("SALES_RETURN" -> RED_LETTER_REASON_SALES_RETURN), carried beside
    the string; UNSPECIFIED for "" (an ordinary invoice) or a code without an enum value."""
    name = f"RED_LETTER_REASON_{reason}"
    if not reason or name not in invoice_pb2.RedLetterReason.keys():
        return invoice_pb2.RED_LETTER_REASON_UNSPECIFIED
    return invoice_pb2.RedLetterReason.Value(name)


def build_body(
    *,
    invoice_id: uuid.UUID,
    invoice_number: str,
    kind: int,
    seller: invoice_pb2.Party,
    buyer: invoice_pb2.Party,
    lines: Sequence[invoice_pb2.InvoiceLine],
    issue_date: str,
    merchant_id: str,
    payment_id: str,
    region_code: str,
    original_invoice_number: str = "",
    red_letter_reason: str = "",
) -> invoice_pb2.InvoiceBody:
    """The invoice content; totals are the sums of the lines, the QR content follows from the rest."""
    totals = totals_of(lines)
    return invoice_pb2.InvoiceBody(
        invoice_id=str(invoice_id),
        invoice_number=invoice_number,
        kind=kind,  # type: ignore[arg-type]
        seller=seller,
        buyer=buyer,
        lines=lines,
        total_amount_fen=totals.amount_fen,
        total_tax_fen=totals.tax_fen,
        total_fen=totals.total_fen,
        issue_date=issue_date,
        merchant_id=merchant_id,
        payment_id=payment_id,
        region_code=region_code,
        verification_qr=verification_qr(invoice_number, totals.total_fen, issue_date),
        original_invoice_number=original_invoice_number,
        red_letter_reason=red_letter_reason,
        red_letter_reason_code=red_letter_reason_code(red_letter_reason),
    )


def sign_invoice(body: invoice_pb2.InvoiceBody, key: SigningKey) -> invoice_pb2.SignedInvoice:
    """Serialize once, sign those bytes, ship those bytes."""
    raw = body.SerializeToString(deterministic=True)
    return invoice_pb2.SignedInvoice(body=raw, signature=key.sign(raw))


def verify_invoice(signed: invoice_pb2.SignedInvoice, public_key_raw: bytes) -> invoice_pb2.InvoiceBody:
    """Check the signature over the shipped bytes with the issuer's raw Ed25519 public key, then decode.

    Raises ValueError when the algorithm is not Ed25519 or the signature does not verify.
    """
    if signed.signature.algorithm != ED25519:
        raise ValueError("unsupported signature algorithm")
    if not ed25519_verify(Ed25519PublicKey.from_public_bytes(public_key_raw), signed.signature.signature, signed.body):
        raise ValueError("invoice signature does not verify")
    return invoice_pb2.InvoiceBody.FromString(signed.body)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def issue_submission(
    invoice_id: uuid.UUID, signed: invoice_pb2.SignedInvoice, key: SigningKey, producer: str
) -> tuple[uuid.UUID, OutgoingEvent]:
    """The ISSUE transaction for a signed invoice, signed with the same issuer key, as an outbox event."""
    transaction_id = uuid.uuid4()
    body = ledger_pb2.TransactionBody(
        transaction_id=str(transaction_id),
        type=ledger_pb2.TRANSACTION_TYPE_ISSUE,
        invoice_id=str(invoice_id),
        issue=ledger_pb2.IssueAction(invoice=signed),
        submitted_at=_now(),
    )
    return transaction_id, transaction_event(sign_transaction(body, key), str(invoice_id), producer)


def red_letter_submission(
    original_invoice_id: uuid.UUID,
    red_letter: invoice_pb2.SignedInvoice,
    *,
    full: bool,
    amount_fen: int,
    reason: str,
    key: SigningKey,
    producer: str,
) -> tuple[uuid.UUID, int, OutgoingEvent]:
    """CANCEL (full) or PARTIAL_RED_LETTER transaction on the original invoice, carrying the red letter."""
    transaction_id = uuid.uuid4()
    body = ledger_pb2.TransactionBody(transaction_id=str(transaction_id), invoice_id=str(original_invoice_id))
    body.submitted_at.CopyFrom(_now())
    if full:
        body.type = ledger_pb2.TRANSACTION_TYPE_CANCEL
        body.cancel.CopyFrom(
            ledger_pb2.CancelAction(
                reason=reason, reason_code=red_letter_reason_code(reason), red_letter_invoice=red_letter
            )
        )
    else:
        body.type = ledger_pb2.TRANSACTION_TYPE_PARTIAL_RED_LETTER
        body.partial_red_letter.CopyFrom(
            ledger_pb2.PartialRedLetterAction(
                amount_fen=amount_fen,
                reason=reason,
                reason_code=red_letter_reason_code(reason),
                red_letter_invoice=red_letter,
            )
        )
    event = transaction_event(sign_transaction(body, key), str(original_invoice_id), producer)
    return transaction_id, body.type, event
