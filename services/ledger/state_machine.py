"""The deterministic invoice state machine and submitter-key registry of one chain.

Everything here is a pure function of the ordered log: no clock, no randomness, no I/O. Callers
provide what the chain already knows (registered keys, invoice states, transaction ids seen) through
`ChainView`; the executor returns the result and the new state, and the caller records both.

    ISSUED -> LOCKED -> CLOSED (final)      LOCKED -> ISSUED (unlock, by the lock holder)
    ISSUED | LOCKED -> CANCELLED            partial red letter lowers reimbursable_fen
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.invoice_ids import chain_of, invoice_id_for_number
from fapiao_runtime.ledger_trust import ED25519, PublicKeys, verify_signature
from google.protobuf.message import DecodeError

T = ledger_pb2.TransactionType

ISSUER_TYPES = {T.TRANSACTION_TYPE_ISSUE, T.TRANSACTION_TYPE_CANCEL, T.TRANSACTION_TYPE_PARTIAL_RED_LETTER}
REIMBURSER_TYPES = {T.TRANSACTION_TYPE_LOCK, T.TRANSACTION_TYPE_UNLOCK, T.TRANSACTION_TYPE_CLOSE}
ACTION_OF_TYPE = {
    T.TRANSACTION_TYPE_ISSUE: "issue",
    T.TRANSACTION_TYPE_LOCK: "lock",
    T.TRANSACTION_TYPE_UNLOCK: "unlock",
    T.TRANSACTION_TYPE_CLOSE: "close",
    T.TRANSACTION_TYPE_CANCEL: "cancel",
    T.TRANSACTION_TYPE_PARTIAL_RED_LETTER: "partial_red_letter",
}

# Rejection reasons (stable strings; documented in docs/ledger.md).
MALFORMED = "MALFORMED"
BAD_SIGNATURE = "BAD_SIGNATURE"
UNKNOWN_SUBMITTER_KEY = "UNKNOWN_SUBMITTER_KEY"
KEY_REVOKED = "KEY_REVOKED"
SUBMITTER_NOT_AUTHORIZED = "SUBMITTER_NOT_AUTHORIZED"
DUPLICATE_TRANSACTION = "DUPLICATE_TRANSACTION"
UNKNOWN_INVOICE = "UNKNOWN_INVOICE"
ALREADY_ISSUED = "ALREADY_ISSUED"
ALREADY_LOCKED = "ALREADY_LOCKED"
ALREADY_CLOSED = "ALREADY_CLOSED"
CANCELLED = "CANCELLED"
NOT_LOCKED = "NOT_LOCKED"
NOT_LOCK_HOLDER = "NOT_LOCK_HOLDER"
ORGANISATION_NOT_ALLOWED = "ORGANISATION_NOT_ALLOWED"
AMOUNT_EXCEEDED = "AMOUNT_EXCEEDED"
INVOICE_ID_NOT_FROM_NUMBER = "INVOICE_ID_NOT_FROM_NUMBER"
WRONG_CHAIN = "WRONG_CHAIN"

R = ledger_pb2.RejectionReason
# Each reason as the RejectionReason a result carries beside the string (REJECTION_REASON_<reason>).
REJECTION_CODES: dict[str, ledger_pb2.RejectionReason.ValueType] = {
    MALFORMED: R.REJECTION_REASON_MALFORMED,
    WRONG_CHAIN: R.REJECTION_REASON_WRONG_CHAIN,
    BAD_SIGNATURE: R.REJECTION_REASON_BAD_SIGNATURE,
    UNKNOWN_SUBMITTER_KEY: R.REJECTION_REASON_UNKNOWN_SUBMITTER_KEY,
    KEY_REVOKED: R.REJECTION_REASON_KEY_REVOKED,
    DUPLICATE_TRANSACTION: R.REJECTION_REASON_DUPLICATE_TRANSACTION,
    SUBMITTER_NOT_AUTHORIZED: R.REJECTION_REASON_SUBMITTER_NOT_AUTHORIZED,
    INVOICE_ID_NOT_FROM_NUMBER: R.REJECTION_REASON_INVOICE_ID_NOT_FROM_NUMBER,
    UNKNOWN_INVOICE: R.REJECTION_REASON_UNKNOWN_INVOICE,
    ALREADY_ISSUED: R.REJECTION_REASON_ALREADY_ISSUED,
    ORGANISATION_NOT_ALLOWED: R.REJECTION_REASON_ORGANISATION_NOT_ALLOWED,
    ALREADY_CLOSED: R.REJECTION_REASON_ALREADY_CLOSED,
    CANCELLED: R.REJECTION_REASON_CANCELLED,
    ALREADY_LOCKED: R.REJECTION_REASON_ALREADY_LOCKED,
    NOT_LOCKED: R.REJECTION_REASON_NOT_LOCKED,
    NOT_LOCK_HOLDER: R.REJECTION_REASON_NOT_LOCK_HOLDER,
    AMOUNT_EXCEEDED: R.REJECTION_REASON_AMOUNT_EXCEEDED,
}


@dataclass(frozen=True)
class SubmitterKey:
    key_id: str
    public_raw: bytes
    public_key: Ed25519PublicKey
    role: int
    subject: str
    revoked: bool
    registration_id: str


class ChainView(Protocol):
    """What the executor may read: the chain's state as of the previous transaction."""

    def key(self, key_id: str) -> SubmitterKey | None: ...

    def invoice(self, invoice_id: str) -> ledger_pb2.InvoiceState | None: ...

    def seen(self, transaction_id: str) -> bool: ...


@dataclass
class Outcome:
    """Result of one transaction; `new_state` is set only when the transaction was accepted."""

    result: ledger_pb2.TransactionResult
    new_state: ledger_pb2.InvoiceState | None
    transaction_id: str
    invoice_id: str
    duplicate: bool = False


@dataclass(frozen=True)
class ParsedTransaction:
    """A SignedTransaction decoded once; body is None when it could not be decoded."""

    signed: ledger_pb2.SignedTransaction
    body: ledger_pb2.TransactionBody | None


def parse_transaction(signed: ledger_pb2.SignedTransaction) -> ParsedTransaction:
    try:
        return ParsedTransaction(signed, ledger_pb2.TransactionBody.FromString(signed.body))
    except DecodeError:
        return ParsedTransaction(signed, None)


def _reject(base: ledger_pb2.TransactionResult, reason: str, state: ledger_pb2.InvoiceState | None) -> Outcome:
    base.accepted = False
    base.rejection_reason = reason
    base.rejection_reason_code = REJECTION_CODES.get(reason, R.REJECTION_REASON_UNSPECIFIED)
    if state is not None:
        base.state.CopyFrom(state)
    return Outcome(base, None, base.transaction_id, base.invoice_id, duplicate=reason == DUPLICATE_TRANSACTION)


def _accept(base: ledger_pb2.TransactionResult, state: ledger_pb2.InvoiceState) -> Outcome:
    state.last_transaction_id = base.transaction_id
    base.accepted = True
    base.state.CopyFrom(state)
    return Outcome(base, state, base.transaction_id, base.invoice_id)


def _parse_invoice(signed: invoice_pb2.SignedInvoice) -> invoice_pb2.InvoiceBody | None:
    try:
        return invoice_pb2.InvoiceBody.FromString(signed.body)
    except DecodeError:
        return None


def execute(
    parsed: ParsedTransaction,
    aggregate_id: str,
    view: ChainView,
    *,
    chain_id: int,
    chains: int,
    height: int,
    index: int,
    offset: int,
) -> Outcome:
    """Decide one transaction. Pure: the same inputs give the same Outcome on every validator.
    `chains` is the number of chains (partitions of the transaction topic), fixed for the ledger."""
    base = ledger_pb2.TransactionResult(chain_id=chain_id, height=height, index=index, offset=offset)
    body = parsed.body
    if body is None:
        return _reject(base, MALFORMED, None)
    base.transaction_id = body.transaction_id
    base.invoice_id = body.invoice_id
    base.type = body.type
    try:
        uuid.UUID(body.transaction_id)
    except ValueError:
        return _reject(base, MALFORMED, None)
    # The record key decides the partition (chain); a body naming another invoice is on the wrong chain.
    if not body.invoice_id or body.invoice_id != aggregate_id:
        return _reject(base, MALFORMED, None)
    action = ACTION_OF_TYPE.get(body.type)
    if action is None or action != body.WhichOneof("action"):
        return _reject(base, MALFORMED, None)
    # Kafka does not check that a record sits in the partition its key maps to. Every invoice has
    # exactly one chain, or two chains could each lock (and close) it: a record elsewhere is refused.
    if chain_of(body.invoice_id, chains) != chain_id:
        return _reject(base, WRONG_CHAIN, None)
    signature = parsed.signed.signature
    if signature.algorithm != ED25519:
        return _reject(base, BAD_SIGNATURE, None)
    key = view.key(signature.key_id)
    if key is None:
        return _reject(base, UNKNOWN_SUBMITTER_KEY, None)
    if key.revoked:
        return _reject(base, KEY_REVOKED, None)
    if not verify_signature({key.key_id: key.public_key}, signature, parsed.signed.body):
        return _reject(base, BAD_SIGNATURE, None)
    if view.seen(body.transaction_id):
        return _reject(base, DUPLICATE_TRANSACTION, view.invoice(body.invoice_id))
    state = view.invoice(body.invoice_id)
    if body.type == ledger_pb2.TRANSACTION_TYPE_ISSUE:
        return _issue(base, body, key, state)
    if state is None:
        return _reject(base, UNKNOWN_INVOICE, None)
    if body.type in REIMBURSER_TYPES:
        if key.role != ledger_pb2.SUBMITTER_ROLE_REIMBURSER:
            return _reject(base, SUBMITTER_NOT_AUTHORIZED, state)
        return _reimbursement(base, body, state)
    if key.role != ledger_pb2.SUBMITTER_ROLE_ISSUER or key.subject != state.seller_tax_id:
        return _reject(base, SUBMITTER_NOT_AUTHORIZED, state)
    return _red_letter(base, body, state)


def _issue(
    base: ledger_pb2.TransactionResult,
    body: ledger_pb2.TransactionBody,
    key: SubmitterKey,
    state: ledger_pb2.InvoiceState | None,
) -> Outcome:
    invoice = _parse_invoice(body.issue.invoice)
    if invoice is None or invoice.invoice_id != body.invoice_id or not invoice.invoice_number:
        return _reject(base, MALFORMED, state)
    if invoice.total_fen <= 0 or invoice.kind != invoice_pb2.INVOICE_KIND_ORDINARY:
        return _reject(base, MALFORMED, state)
    if key.role != ledger_pb2.SUBMITTER_ROLE_ISSUER or key.subject != invoice.seller.tax_id:
        return _reject(base, SUBMITTER_NOT_AUTHORIZED, state)
    if invoice.invoice_id != invoice_id_for_number(invoice.invoice_number):
        # One number, one invoice id, one chain: a number cannot be issued twice on two chains.
        return _reject(base, INVOICE_ID_NOT_FROM_NUMBER, state)
    if state is not None:
        return _reject(base, ALREADY_ISSUED, state)
    new_state = ledger_pb2.InvoiceState(
        invoice_id=invoice.invoice_id,
        invoice_number=invoice.invoice_number,
        status=ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED,
        total_fen=invoice.total_fen,
        reimbursable_fen=invoice.total_fen,
        buyer_tax_id=invoice.buyer.tax_id,
        seller_tax_id=invoice.seller.tax_id,
        issue_date=invoice.issue_date,
    )
    return _accept(base, new_state)


def _closed_or_cancelled(base: ledger_pb2.TransactionResult, state: ledger_pb2.InvoiceState) -> Outcome | None:
    if state.status == ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED:
        return _reject(base, ALREADY_CLOSED, state)
    if state.status == ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED:
        return _reject(base, CANCELLED, state)
    return None


def _reimbursement(
    base: ledger_pb2.TransactionResult, body: ledger_pb2.TransactionBody, state: ledger_pb2.InvoiceState
) -> Outcome:
    action = getattr(body, ACTION_OF_TYPE[body.type])
    organisation = action.organisation_tax_id
    if not organisation:
        return _reject(base, MALFORMED, state)
    # A company buyer's invoice is reimbursed only by that company; a person's by any organisation.
    if state.buyer_tax_id and organisation != state.buyer_tax_id:
        return _reject(base, ORGANISATION_NOT_ALLOWED, state)
    finished = _closed_or_cancelled(base, state)
    if finished is not None:
        return finished
    new_state = ledger_pb2.InvoiceState()
    new_state.CopyFrom(state)
    if body.type == ledger_pb2.TRANSACTION_TYPE_LOCK:
        if state.status == ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED:
            return _reject(base, ALREADY_LOCKED, state)
        new_state.status = ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED
        new_state.lock_holder_tax_id = organisation
        return _accept(base, new_state)
    if state.status != ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED:
        return _reject(base, NOT_LOCKED, state)
    if state.lock_holder_tax_id != organisation:
        return _reject(base, NOT_LOCK_HOLDER, state)
    if body.type == ledger_pb2.TRANSACTION_TYPE_UNLOCK:
        new_state.status = ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED
        new_state.lock_holder_tax_id = ""
    else:
        new_state.status = ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED
    return _accept(base, new_state)


def _red_letter(
    base: ledger_pb2.TransactionResult, body: ledger_pb2.TransactionBody, state: ledger_pb2.InvoiceState
) -> Outcome:
    finished = _closed_or_cancelled(base, state)
    if finished is not None:
        return finished
    action = getattr(body, ACTION_OF_TYPE[body.type])
    if action.HasField("red_letter_invoice"):
        red = _parse_invoice(action.red_letter_invoice)
        if red is None or red.original_invoice_number != state.invoice_number:
            return _reject(base, MALFORMED, state)
    new_state = ledger_pb2.InvoiceState()
    new_state.CopyFrom(state)
    if body.type == ledger_pb2.TRANSACTION_TYPE_CANCEL:
        new_state.status = ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED
        new_state.reimbursable_fen = 0
        new_state.lock_holder_tax_id = ""
        return _accept(base, new_state)
    amount = body.partial_red_letter.amount_fen
    if amount <= 0:
        return _reject(base, MALFORMED, state)
    if amount > state.reimbursable_fen:
        return _reject(base, AMOUNT_EXCEEDED, state)
    new_state.reimbursable_fen = state.reimbursable_fen - amount
    if new_state.reimbursable_fen == 0:
        # Red-lettering the whole remaining amount is a full red letter.
        new_state.status = ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED
        new_state.lock_holder_tax_id = ""
    return _accept(base, new_state)


def register_key(
    keys: dict[str, SubmitterKey],
    registration_ids: set[str],
    authorities: PublicKeys,
    signed: ledger_pb2.SignedKeyRegistration,
) -> SubmitterKey | None:
    """Apply a registration record to a registry (keys by id, registration ids applied) in place; the
    entry it made, or None when it changed nothing (`apply_registration`)."""
    try:
        registration = ledger_pb2.KeyRegistration.FromString(signed.body)
    except DecodeError:
        return None
    entry = apply_registration(
        signed, authorities, keys.get(registration.key_id), registration.registration_id in registration_ids
    )
    if entry is not None:
        keys[entry.key_id] = entry
        registration_ids.add(entry.registration_id)
    return entry


def apply_registration(
    signed: ledger_pb2.SignedKeyRegistration,
    authorities: PublicKeys,
    current: SubmitterKey | None,
    seen_registration: bool,
) -> SubmitterKey | None:
    """The key entry after a registration record, or None when the record changes nothing.

    Ignored (deterministically): bad authority signature, undecodable body, a registration id seen
    before, a new public key for an existing key id (keys are immutable), anything after revocation.
    """
    if seen_registration or not verify_signature(authorities, signed.signature, signed.body):
        return None
    try:
        registration = ledger_pb2.KeyRegistration.FromString(signed.body)
    except DecodeError:
        return None
    if not registration.key_id or not registration.registration_id:
        return None
    if current is not None:
        if current.revoked or not registration.revoked:
            return None
        return SubmitterKey(
            current.key_id,
            current.public_raw,
            current.public_key,
            current.role,
            current.subject,
            True,
            registration.registration_id,
        )
    if registration.revoked or registration.role not in (
        ledger_pb2.SUBMITTER_ROLE_ISSUER,
        ledger_pb2.SUBMITTER_ROLE_REIMBURSER,
    ):
        return None
    try:
        public_key = Ed25519PublicKey.from_public_bytes(registration.public_key)
    except ValueError:
        return None
    return SubmitterKey(
        registration.key_id,
        registration.public_key,
        public_key,
        registration.role,
        registration.subject,
        False,
        registration.registration_id,
    )
