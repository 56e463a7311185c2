"""Is this invoice genuine? Decided from what a validator returns, trusting none of it unchecked.

Genuine means all of:
1. the ISSUE receipt verifies offline (RFC 6962 inclusion of the transaction and its result under a
   block header signed by a quorum of the configured validator keys) and its result is an accepted ISSUE;
2. the signed invoice inside that transaction verifies: the issuer's Ed25519 signature over the shipped
   body bytes, with the issuer key the signature names (which the ledger accepted as registered for the
   seller when it executed the ISSUE);
3. the body's number, issue date and 价税合计 equal what the person typed (or the QR says).
The current status (locked / reimbursed / cancelled) comes from the receipt of the last accepted
transaction, verified the same way. A mismatch of date or total is answered like an unknown number,
so the page cannot be used to learn anything about an invoice without knowing all three fields.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime.ledger_trust import PublicKeys, ReceiptInvalid, verify_receipt, verify_signature
from google.protobuf.message import DecodeError

from gateway.qr_content import VerificationQuery

# (merchant_id, key_id) -> the issuer public key, or None when the merchant has no such key.
IssuerKeyLookup = Callable[[str, str], Awaitable[Ed25519PublicKey | None]]


class Outcome(enum.StrEnum):
    GENUINE = "GENUINE"
    LOCKED = "LOCKED"
    REIMBURSED = "REIMBURSED"
    CANCELLED = "CANCELLED"
    FORGED = "FORGED"
    NO_MATCH = "NO_MATCH"
    PENDING = "PENDING"


@dataclass(frozen=True)
class Verdict:
    """What the verification page may show: never the buyer."""

    outcome: Outcome
    reason: str = ""
    invoice_number: str = ""
    issue_date: str = ""
    total_fen: int = 0
    reimbursable_fen: int = 0
    seller_name: str = ""
    seller_tax_id: str = ""
    chain_id: int = 0
    height: int = 0

    @property
    def partially_red_lettered(self) -> bool:
        return self.outcome is Outcome.GENUINE and 0 <= self.reimbursable_fen < self.total_fen


_STATUS_OUTCOME = {
    ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED: Outcome.GENUINE,
    ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED: Outcome.LOCKED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED: Outcome.REIMBURSED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED: Outcome.CANCELLED,
}


def _forged(reason: str) -> Verdict:
    return Verdict(Outcome.FORGED, reason=reason)


def _has_receipt(receipt: ledger_pb2.Receipt) -> bool:
    return bool(receipt.header)


def signed_invoice_of(receipt: ledger_pb2.Receipt) -> invoice_pb2.SignedInvoice | None:
    """The SignedInvoice an ISSUE receipt carries, or None when it carries none."""
    try:
        signed_tx = ledger_pb2.SignedTransaction.FromString(receipt.transaction)
        body = ledger_pb2.TransactionBody.FromString(signed_tx.body)
    except DecodeError:
        return None
    if body.type != ledger_pb2.TRANSACTION_TYPE_ISSUE or body.WhichOneof("action") != "issue":
        return None
    return body.issue.invoice


async def verify_invoice(
    query: VerificationQuery,
    ledger: ledger_service_pb2.GetInvoiceStateResponse,
    validator_keys: PublicKeys,
    quorum: int,
    issuer_key: IssuerKeyLookup,
) -> Verdict:
    """Decide the verdict for `query` from a validator's GetInvoiceState answer (see module doc)."""
    state = ledger.state
    if not _has_receipt(ledger.issue_receipt):
        # Not final yet: say so only to someone who already knows date and total.
        if state.issue_date == query.issue_date and state.total_fen == query.total_fen:
            return Verdict(Outcome.PENDING, invoice_number=query.invoice_number)
        return Verdict(Outcome.NO_MATCH)
    try:
        issued = verify_receipt(ledger.issue_receipt, validator_keys, quorum)
    except ReceiptInvalid as invalid:
        return _forged(invalid.reason)
    if not issued.accepted or issued.type != ledger_pb2.TRANSACTION_TYPE_ISSUE:
        return _forged("ISSUE_NOT_ACCEPTED")
    signed = signed_invoice_of(ledger.issue_receipt)
    if signed is None:
        return _forged("NOT_AN_ISSUE_RECEIPT")
    try:
        body = invoice_pb2.InvoiceBody.FromString(signed.body)
    except DecodeError:
        return _forged("MALFORMED_INVOICE")
    if body.invoice_number != query.invoice_number or body.invoice_id != issued.invoice_id:
        return _forged("RECEIPT_FOR_ANOTHER_INVOICE")
    if body.issue_date != query.issue_date or body.total_fen != query.total_fen:
        return Verdict(Outcome.NO_MATCH)
    key = await issuer_key(body.merchant_id, signed.signature.key_id)
    if key is None:
        return _forged("UNKNOWN_ISSUER_KEY")
    if not verify_signature({signed.signature.key_id: key}, signed.signature, signed.body):
        return _forged("BAD_ISSUER_SIGNATURE")
    if issued.state.seller_tax_id and issued.state.seller_tax_id != body.seller.tax_id:
        return _forged("SELLER_MISMATCH")
    latest = issued
    if _has_receipt(ledger.receipt):
        try:
            latest = verify_receipt(ledger.receipt, validator_keys, quorum)
        except ReceiptInvalid as invalid:
            return _forged(invalid.reason)
        if latest.invoice_id != issued.invoice_id or not latest.accepted:
            return _forged("STATE_RECEIPT_FOR_ANOTHER_INVOICE")
        if (latest.chain_id, latest.height, latest.index) < (issued.chain_id, issued.height, issued.index):
            latest = issued
    outcome = _STATUS_OUTCOME.get(latest.state.status)
    if outcome is None:
        return _forged("UNKNOWN_LEDGER_STATUS")
    return Verdict(
        outcome,
        invoice_number=body.invoice_number,
        issue_date=body.issue_date,
        total_fen=body.total_fen,
        reimbursable_fen=latest.state.reimbursable_fen,
        seller_name=body.seller.name,
        seller_tax_id=body.seller.tax_id,
        chain_id=latest.chain_id,
        height=latest.height,
    )


_VERIFIED_STATUSES = frozenset({Outcome.GENUINE, Outcome.LOCKED, Outcome.REIMBURSED, Outcome.CANCELLED})


def freshest(verdicts: list[Verdict]) -> Verdict:
    """One verdict from several validators' answers: the verified status of the highest block (a
    validator behind, or a faulty one answering an older valid receipt, cannot show an outdated
    status); without any, not yet final or no match before forged (a faulty validator's bad receipt
    must not make a genuine invoice look forged)."""
    verified = [v for v in verdicts if v.outcome in _VERIFIED_STATUSES]
    if verified:
        return max(verified, key=lambda v: (v.chain_id, v.height))
    for outcome in (Outcome.PENDING, Outcome.NO_MATCH):
        for verdict in verdicts:
            if verdict.outcome is outcome:
                return verdict
    return verdicts[0]
