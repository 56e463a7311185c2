"""VerifyInvoice: is an invoice genuine, and what is its reimbursement status?

Genuine means both: the ISSUE receipt verifies offline with the validators' public keys and quorum
(so the ledger really recorded this exact signed invoice), and the issuer's signature over the exact
invoice bytes verifies with a key an authority registered for the seller. The caller must also know
the invoice's number, issue date and total; on a mismatch nothing else is revealed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from fapiao.ledger.v1 import ledger_pb2
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import InvalidArgument, Unavailable
from fapiao_runtime.ledger_trust import PublicKeys, ReceiptInvalid, verify_receipt
from fapiao_runtime.vocabulary import ISSUE_DATE, require_invoice_number

from reimbursement.invoice_facts import FactsCache, facts_of, invoice_body, signed_invoice_from_receipt
from reimbursement.issuer_keys import find_issuer_key, issuer_signature_problem
from reimbursement.ledger_port import LedgerPort
from reimbursement.organisations import Organisation
from reimbursement.rate_limits import OrganisationRateLimiter, count_check, uncount_check

STATUS_FROM_LEDGER = {
    ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED: rpb.REIMBURSEMENT_STATUS_INIT,
    ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED: rpb.REIMBURSEMENT_STATUS_LOCKED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED: rpb.REIMBURSEMENT_STATUS_CLOSED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED: rpb.REIMBURSEMENT_STATUS_CANCELLED,
}


@dataclass(frozen=True)
class VerificationSettings:
    daily_checks_per_invoice: int = 5
    checks_per_second: float = 20.0


class InvoiceVerifier:
    def __init__(
        self,
        pool: asyncpg.Pool,
        ledger: LedgerPort,
        validator_keys: PublicKeys,
        quorum: int | None,
        settings: VerificationSettings | None = None,
        keys_caught_up: Callable[[], Awaitable[bool]] | None = None,
        facts_cache: FactsCache | None = None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger
        self._validator_keys = validator_keys
        self._quorum = quorum
        self._settings = settings or VerificationSettings()
        self._limiter = OrganisationRateLimiter(self._settings.checks_per_second)
        # IssuerKeyRecorder.caught_up: a key not stored yet may have been registered a moment ago.
        self._keys_caught_up = keys_caught_up
        self._facts_cache = facts_cache

    async def verify(self, organisation: Organisation, request: rpb.VerifyInvoiceRequest) -> rpb.VerifyInvoiceResponse:
        """Errors: INVALID_ARGUMENT for malformed input, RESOURCE_EXHAUSTED over a rate limit,
        UNAVAILABLE when the ledger or the issuer keys cannot be read yet (the check is then not counted).

        Everything else is an answer: genuine=false with `problem` naming the first failed check.
        """
        require_invoice_number(request.invoice_number)
        if not ISSUE_DATE.fullmatch(request.issue_date):
            raise InvalidArgument("INVALID_ISSUE_DATE", "issue_date is yyyymmdd")
        self._limiter.take(organisation.tax_id)
        remaining = await count_check(
            self._pool, organisation.tax_id, request.invoice_number, self._settings.daily_checks_per_invoice
        )
        try:
            return await self._verify(request, rpb.VerifyInvoiceResponse(checks_remaining_today=remaining))
        except Unavailable:
            await uncount_check(self._pool, organisation.tax_id, request.invoice_number)
            raise

    async def _verify(
        self, request: rpb.VerifyInvoiceRequest, reply: rpb.VerifyInvoiceResponse
    ) -> rpb.VerifyInvoiceResponse:
        response = await self._ledger.invoice_state(request.invoice_number)
        if response is None:
            reply.problem = "NOT_ON_LEDGER"
            return reply
        if not response.HasField("issue_receipt"):
            reply.problem = "ISSUE_NOT_FINAL"
            return reply
        try:
            issue_result = verify_receipt(response.issue_receipt, self._validator_keys, self._quorum)
        except ReceiptInvalid as exc:
            reply.problem = f"BAD_LEDGER_RECEIPT:{exc.reason}"
            return reply
        signed = signed_invoice_from_receipt(response.issue_receipt)
        body = invoice_body(signed) if signed is not None else None
        if signed is None or body is None or not issue_result.accepted:
            reply.problem = "NOT_ON_LEDGER"
            return reply
        self._remember_facts(request.invoice_number, issue_result.state)
        if (
            body.invoice_number != request.invoice_number
            or body.issue_date != request.issue_date
            or body.total_fen != request.total_fen
        ):
            # Number, date and total together are the proof of possession; reveal nothing more.
            reply.problem = "DETAILS_MISMATCH"
            return reply
        reply.seller_name = body.seller.name
        reply.seller_tax_id = body.seller.tax_id
        issuer_key = await find_issuer_key(self._pool, signed.signature.key_id)
        if issuer_key is None and self._keys_caught_up is not None:
            # The ISSUE is final, so its key's registration is already in the log (before the ISSUE):
            # wait until what the log holds now is stored, then look again. Unable to tell is no answer:
            # a genuine invoice must not be called forged because this replica is behind.
            if not await self._keys_caught_up():
                raise Unavailable("ISSUER_KEYS_CATCHING_UP", "issuer keys are still being read from the ledger; retry")
            issuer_key = await find_issuer_key(self._pool, signed.signature.key_id)
        problem = issuer_signature_problem(signed, body.seller.tax_id, issuer_key)
        state = issue_result.state
        reply.ledger_height = issue_result.height
        if response.HasField("receipt"):
            # The latest final transaction's receipt carries the current status, attested by the quorum.
            try:
                latest = verify_receipt(response.receipt, self._validator_keys, self._quorum)
            except ReceiptInvalid as exc:
                reply.problem = f"BAD_LEDGER_RECEIPT:{exc.reason}"
                return reply
            if latest.invoice_id == issue_result.invoice_id:
                state = latest.state
                reply.ledger_height = latest.height
        reply.status = STATUS_FROM_LEDGER.get(state.status, rpb.REIMBURSEMENT_STATUS_UNSPECIFIED)
        reply.reimbursable_fen = state.reimbursable_fen
        if problem:
            reply.problem = problem
            return reply
        reply.genuine = True
        return reply

    def _remember_facts(self, invoice_number: str, state: ledger_pb2.InvoiceState) -> None:
        """The facts a LOCK is pre-checked against, from the quorum-verified ISSUE receipt: finance
        departments verify an invoice before they lock it, and the lock then needs no ledger read."""
        facts = facts_of(state)
        if self._facts_cache is not None and facts.are_of(invoice_number):
            self._facts_cache.put(facts)
