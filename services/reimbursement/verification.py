"""VerifyInvoice: is an invoice genuine, and what is its reimbursement status?

The decision is `fapiao_runtime.invoice_verify`'s, the same as the gateway's verification page and
`fapiao verify`: the ISSUE receipt verifies offline with the validators' public keys and quorum and
names this invoice, the issuer's signature over the exact invoice bytes verifies with a live key an
authority registered for the seller (learnt from the ledger log, see `fapiao_runtime.issuer_keys`)
and the ledger accepted the ISSUE under, and the status comes from the invoice's latest accepted
transaction's receipt. The caller must also know the invoice's number, issue date and total; on a
mismatch nothing else is revealed. This module adds the rate limits, the issuer key lookup and the
API's wording of the verdict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from fapiao.ledger.v1 import ledger_pb2
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import InvalidArgument, Unavailable
from fapiao_runtime.invoice_verify import NOT_ISSUED_REASONS, Outcome, Verdict, decide, read_issue
from fapiao_runtime.issuer_keys import ISSUER_REASONS
from fapiao_runtime.ledger_trust import PublicKeys
from fapiao_runtime.vocabulary import ISSUE_DATE, require_invoice_number

from reimbursement.invoice_facts import FactsCache, facts_of
from reimbursement.ledger_port import LedgerPort
from reimbursement.organisations import Organisation
from reimbursement.rate_limits import OrganisationRateLimiter, count_check, uncount_check
from reimbursement.settings import VerificationSettings
from reimbursement.store import find_issuer_key

STATUS_FROM_LEDGER = {
    ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED: rpb.REIMBURSEMENT_STATUS_INIT,
    ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED: rpb.REIMBURSEMENT_STATUS_LOCKED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED: rpb.REIMBURSEMENT_STATUS_CLOSED,
    ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED: rpb.REIMBURSEMENT_STATUS_CANCELLED,
}


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
        # IssuerKeyFollower.caught_up: a key not stored yet may have been registered a moment ago.
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
        issued = read_issue(request, response, self._validator_keys, self._quorum)
        if isinstance(issued, Verdict):
            return _answer(issued, reply)
        # The ISSUE receipt verified and names this invoice: its facts may serve a later LOCK.
        self._remember_facts(request.invoice_number, issued.issued.state)
        issuer_key = await find_issuer_key(self._pool, issued.key_id)
        if issuer_key is None and self._keys_caught_up is not None:
            # The ISSUE is final, so its key's registration is already in the log (before the ISSUE):
            # wait until what the log holds now is stored, then look again. Unable to tell is no answer:
            # a genuine invoice must not be called forged because this replica is behind.
            if not await self._keys_caught_up():
                raise Unavailable("ISSUER_KEYS_CATCHING_UP", "issuer keys are still being read from the ledger; retry")
            issuer_key = await find_issuer_key(self._pool, issued.key_id)
        return _answer(decide(issued, self._validator_keys, self._quorum, issuer_key), reply)

    def _remember_facts(self, invoice_number: str, state: ledger_pb2.InvoiceState) -> None:
        """The facts a LOCK is pre-checked against, from the quorum-verified ISSUE receipt: finance
        departments verify an invoice before they lock it, and the lock then needs no ledger read."""
        facts = facts_of(state)
        if self._facts_cache is not None and facts.are_of(invoice_number):
            self._facts_cache.put(facts)


def _answer(verdict: Verdict, reply: rpb.VerifyInvoiceResponse) -> rpb.VerifyInvoiceResponse:
    """The API's answer for a verdict: `problem` names the first failed check (see the proto)."""
    if verdict.outcome is Outcome.PENDING:
        reply.problem = "ISSUE_NOT_FINAL"
        return reply
    if verdict.outcome is Outcome.NO_MATCH:
        # Number, date and total together are the proof of possession; reveal nothing more.
        reply.problem = "DETAILS_MISMATCH"
        return reply
    reply.seller_name = verdict.seller_name
    reply.seller_tax_id = verdict.seller_tax_id
    if verdict.status:
        reply.status = STATUS_FROM_LEDGER.get(verdict.status, rpb.REIMBURSEMENT_STATUS_UNSPECIFIED)
        reply.reimbursable_fen = verdict.reimbursable_fen
        reply.ledger_height = verdict.height
    if verdict.verified:
        reply.genuine = True
    elif verdict.reason in NOT_ISSUED_REASONS:
        reply.problem = "NOT_ON_LEDGER"
    elif verdict.reason in ISSUER_REASONS:
        reply.problem = verdict.reason
    else:
        reply.problem = f"BAD_LEDGER_RECEIPT:{verdict.reason}"
    return reply
