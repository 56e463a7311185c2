"""Is this invoice genuine? One decision for every verifier (the gateway's page, reimbursement's
VerifyInvoice, `fapiao verify`), from what a validator answers, trusting none of it unchecked.

Genuine means all of:
1. the ISSUE receipt verifies offline (RFC 6962 inclusion of the transaction and its result under a
   block header signed by a quorum of the configured validator keys), its result is an accepted ISSUE,
   and the invoice it carries is the one asked about (number, and the invoice id the ledger decided);
2. the number, issue date and 价税合计 equal what the asker claims (a mismatch is answered like an
   unknown number, so nothing is learnt about an invoice without knowing all three);
3. the issuer's Ed25519 signature over the shipped invoice bytes verifies with a live key of the
   seller that the ledger accepted the ISSUE under (`fapiao_runtime.issuer_keys`), and the seller the
   ledger recorded is the invoice's;
4. the current status comes from the receipt of the invoice's latest accepted transaction, verified
   the same way (a receipt about another invoice, or a rejected transaction, is a faulty answer).

Pure: no I/O, no clock. Callers that look the issuer key up (a database, a service) run it in two
steps, `read_issue` then `decide`, and look the key up in between, only once the receipts verified.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Protocol

from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from google.protobuf.message import DecodeError

from fapiao_runtime.issuer_keys import IssuerKey, issuer_key_problem
from fapiao_runtime.ledger_trust import PublicKeys, ReceiptInvalid, verify_receipt


class Outcome(enum.StrEnum):
    GENUINE = "GENUINE"
    LOCKED = "LOCKED"
    REIMBURSED = "REIMBURSED"
    CANCELLED = "CANCELLED"
    FORGED = "FORGED"
    NO_MATCH = "NO_MATCH"
    PENDING = "PENDING"


# The outcomes of an invoice whose every check passed: its ledger status.
VERIFIED = frozenset({Outcome.GENUINE, Outcome.LOCKED, Outcome.REIMBURSED, Outcome.CANCELLED})

_STATUS_OUTCOME = {
    ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED: Outcome.GENUINE,
    ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED: Outcome.LOCKED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED: Outcome.REIMBURSED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED: Outcome.CANCELLED,
}

# FORGED reasons of this module (beside the receipt reasons of `ledger_trust.verify_receipt`,
# RECEIPT_*, and the issuer key reasons of `issuer_keys`).
ISSUE_NOT_ACCEPTED = "ISSUE_NOT_ACCEPTED"
NOT_AN_ISSUE_RECEIPT = "NOT_AN_ISSUE_RECEIPT"
MALFORMED_INVOICE = "MALFORMED_INVOICE"
RECEIPT_FOR_ANOTHER_INVOICE = "RECEIPT_FOR_ANOTHER_INVOICE"
SELLER_MISMATCH = "SELLER_MISMATCH"
STATE_RECEIPT_FOR_ANOTHER_INVOICE = "STATE_RECEIPT_FOR_ANOTHER_INVOICE"
UNKNOWN_LEDGER_STATUS = "UNKNOWN_LEDGER_STATUS"
# The ledger holds no final ISSUE for the invoice the answer describes: nothing on the ledger vouches
# for it (as opposed to a receipt that is inconsistent, which a faulty validator made).
NOT_ISSUED_REASONS = frozenset({ISSUE_NOT_ACCEPTED, NOT_AN_ISSUE_RECEIPT, MALFORMED_INVOICE})


class ClaimedInvoice(Protocol):
    """What the asker knows about the invoice: its number, issue date (yyyymmdd) and 价税合计."""

    @property
    def invoice_number(self) -> str: ...

    @property
    def issue_date(self) -> str: ...

    @property
    def total_fen(self) -> int: ...


@dataclass(frozen=True)
class NumberOnly:
    """A claim of the number alone (`fapiao verify --invoice-number`): date and total are not compared."""

    invoice_number: str


@dataclass(frozen=True)
class Verdict:
    """The decision. Seller and amounts are set once number, date and total matched; status, chain
    and height once the status receipt verified. Never the buyer: it may be shown to anyone who
    knows the three fields."""

    outcome: Outcome
    reason: str = ""
    invoice_number: str = ""
    issue_date: str = ""
    total_fen: int = 0
    reimbursable_fen: int = 0
    seller_name: str = ""
    seller_tax_id: str = ""
    status: ledger_pb2.InvoiceLedgerStatus.ValueType = ledger_pb2.INVOICE_LEDGER_STATUS_UNSPECIFIED
    chain_id: int = 0
    height: int = 0

    @property
    def verified(self) -> bool:
        return self.outcome in VERIFIED

    @property
    def partially_red_lettered(self) -> bool:
        return self.outcome is Outcome.GENUINE and 0 <= self.reimbursable_fen < self.total_fen


def forged(reason: str) -> Verdict:
    return Verdict(Outcome.FORGED, reason=reason)


@dataclass(frozen=True)
class IssuedInvoice:
    """An ISSUE receipt that verified, with the invoice it carries matching the claim: what is left to
    decide is the issuer's signature and the current status (`decide`)."""

    claim: ClaimedInvoice | NumberOnly
    answer: ledger_service_pb2.GetInvoiceStateResponse
    issue_transaction: ledger_pb2.SignedTransaction
    signed: invoice_pb2.SignedInvoice
    body: invoice_pb2.InvoiceBody
    issued: ledger_pb2.TransactionResult

    @property
    def key_id(self) -> str:
        """The issuer key the invoice's signature names."""
        return self.signed.signature.key_id

    @property
    def merchant_id(self) -> str:
        return self.body.merchant_id


def issue_transaction_of(
    receipt: ledger_pb2.Receipt,
) -> tuple[ledger_pb2.SignedTransaction, ledger_pb2.TransactionBody]:
    """The signed transaction of a receipt and its body; DecodeError when they do not decode."""
    signed_tx = ledger_pb2.SignedTransaction.FromString(receipt.transaction)
    return signed_tx, ledger_pb2.TransactionBody.FromString(signed_tx.body)


def signed_invoice_of(receipt: ledger_pb2.Receipt) -> invoice_pb2.SignedInvoice | None:
    """The SignedInvoice an ISSUE receipt carries, or None when it carries none."""
    try:
        _signed_tx, body = issue_transaction_of(receipt)
    except DecodeError:
        return None
    if body.type != ledger_pb2.TRANSACTION_TYPE_ISSUE or body.WhichOneof("action") != "issue":
        return None
    return body.issue.invoice


def _details_match(claim: ClaimedInvoice | NumberOnly, issue_date: str, total_fen: int) -> bool:
    if isinstance(claim, NumberOnly):
        return True
    return claim.issue_date == issue_date and claim.total_fen == total_fen


def read_issue(
    claim: ClaimedInvoice | NumberOnly,
    answer: ledger_service_pb2.GetInvoiceStateResponse,
    validator_keys: PublicKeys,
    quorum: int | None,
) -> IssuedInvoice | Verdict:
    """Step 1: verify the ISSUE receipt and compare the invoice it carries with the claim.

    A Verdict when that already decides (PENDING, NO_MATCH or FORGED with the first failed check);
    else the IssuedInvoice to `decide` on. `quorum` None: quorum_for(len(validator_keys)).
    """
    if not answer.issue_receipt.header:
        # Not final yet: say so only to someone who already knows date and total.
        state = answer.state
        if _details_match(claim, state.issue_date, state.total_fen):
            return Verdict(Outcome.PENDING, invoice_number=claim.invoice_number)
        return Verdict(Outcome.NO_MATCH)
    try:
        issued = verify_receipt(answer.issue_receipt, validator_keys, quorum)
    except ReceiptInvalid as invalid:
        return forged(invalid.reason)
    if not issued.accepted or issued.type != ledger_pb2.TRANSACTION_TYPE_ISSUE:
        return forged(ISSUE_NOT_ACCEPTED)
    signed = signed_invoice_of(answer.issue_receipt)
    if signed is None:
        return forged(NOT_AN_ISSUE_RECEIPT)
    try:
        body = invoice_pb2.InvoiceBody.FromString(signed.body)
    except DecodeError:
        return forged(MALFORMED_INVOICE)
    if body.invoice_number != claim.invoice_number or body.invoice_id != issued.invoice_id:
        return forged(RECEIPT_FOR_ANOTHER_INVOICE)
    if not _details_match(claim, body.issue_date, body.total_fen):
        return Verdict(Outcome.NO_MATCH)
    issue_transaction, _ = issue_transaction_of(answer.issue_receipt)  # decoded above by signed_invoice_of
    return IssuedInvoice(claim, answer, issue_transaction, signed, body, issued)


def _latest(
    issued: IssuedInvoice, validator_keys: PublicKeys, quorum: int | None
) -> ledger_pb2.TransactionResult | str:
    """The result that carries the invoice's current state, or the reason the status receipt is refused."""
    latest = issued.issued
    receipt = issued.answer.receipt
    if receipt.header:
        try:
            latest = verify_receipt(receipt, validator_keys, quorum)
        except ReceiptInvalid as invalid:
            return invalid.reason
        if latest.invoice_id != issued.issued.invoice_id or not latest.accepted:
            return STATE_RECEIPT_FOR_ANOTHER_INVOICE
        position = (latest.chain_id, latest.height, latest.index)
        if position < (issued.issued.chain_id, issued.issued.height, issued.issued.index):
            latest = issued.issued
    if latest.state.status not in _STATUS_OUTCOME:
        return UNKNOWN_LEDGER_STATUS
    return latest


def decide(
    issued: IssuedInvoice,
    validator_keys: PublicKeys,
    quorum: int | None,
    issuer_key: IssuerKey | None,
    *,
    check_issuer: bool = True,
) -> Verdict:
    """Step 2: the issuer's signature and the current status. `issuer_key` is the key the invoice's
    signature names (`issued.key_id`) as the caller's source knows it, None when unknown.

    check_issuer=False leaves the issuer's signature unchecked (a verifier holding no issuer keys, as
    `fapiao verify`: the quorum-signed receipt alone says the ledger accepted the ISSUE).
    On FORGED the verdict still carries what was established (seller, and status when its receipt
    verified), for callers that report both.
    """
    body = issued.body
    latest = _latest(issued, validator_keys, quorum)
    shown = Verdict(
        Outcome.FORGED,
        invoice_number=body.invoice_number,
        issue_date=body.issue_date,
        total_fen=body.total_fen,
        seller_name=body.seller.name,
        seller_tax_id=body.seller.tax_id,
    )
    if isinstance(latest, ledger_pb2.TransactionResult):
        shown = _with_status(shown, latest)
    problem = ""
    if check_issuer:
        problem = issuer_key_problem(issued.signed, body.seller.tax_id, issuer_key, issued.issue_transaction)
    if not problem and issued.issued.state.seller_tax_id and issued.issued.state.seller_tax_id != body.seller.tax_id:
        problem = SELLER_MISMATCH
    if not problem and isinstance(latest, str):
        problem = latest
    if problem:
        return replace(shown, reason=problem)
    return replace(shown, outcome=_STATUS_OUTCOME[shown.status])


def _with_status(verdict: Verdict, latest: ledger_pb2.TransactionResult) -> Verdict:
    return replace(
        verdict,
        status=latest.state.status,
        reimbursable_fen=latest.state.reimbursable_fen,
        chain_id=latest.chain_id,
        height=latest.height,
    )


def verify_invoice(
    claim: ClaimedInvoice | NumberOnly,
    answer: ledger_service_pb2.GetInvoiceStateResponse,
    validator_keys: PublicKeys,
    quorum: int | None,
    issuer_key: IssuerKey | None,
) -> Verdict:
    """Both steps at once, for a caller that already holds the issuer key (see the module doc)."""
    issued = read_issue(claim, answer, validator_keys, quorum)
    if isinstance(issued, Verdict):
        return issued
    return decide(issued, validator_keys, quorum, issuer_key)


def freshest(verdicts: list[Verdict]) -> Verdict:
    """One verdict from several validators' answers: the verified status of the highest block (a
    validator behind, or a faulty one answering an older valid receipt, cannot show an outdated
    status); without any, not yet final or no match before forged (a faulty validator's bad receipt
    must not make a genuine invoice look forged)."""
    verified = [v for v in verdicts if v.verified]
    if verified:
        return max(verified, key=lambda v: (v.chain_id, v.height))
    for outcome in (Outcome.PENDING, Outcome.NO_MATCH):
        for verdict in verdicts:
            if verdict.outcome is outcome:
                return verdict
    return verdicts[0]
