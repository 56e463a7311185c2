"""Lock, unlock and close invoices for an organisation: authorize, persist, submit, return the outcome.

Single use is decided by the ledger's ordered log, never here: these handlers only authorize the
caller, persist the request with its transaction ids (idempotency), hand the signed transactions to
the outbox in the same database transaction, and wait for the committed outcome.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FapiaoError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from fapiao_runtime.ledger_client import UNVERIFIED_REJECTIONS
from fapiao_runtime.vocabulary import require_invoice_number

from reimbursement import store
from reimbursement.identity import require_active
from reimbursement.invoice_facts import FactsCache, InvoiceFacts, facts_of
from reimbursement.ledger_port import LedgerPort
from reimbursement.organisations import Organisation
from reimbursement.settings import HandlerSettings
from reimbursement.store import Action, Operation, Purpose, TxRow, TxState

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MAX_BATCH = 50

_TX_TYPE = {
    Action.LOCK: ledger_pb2.TRANSACTION_TYPE_LOCK,
    Action.UNLOCK: ledger_pb2.TRANSACTION_TYPE_UNLOCK,
    Action.CLOSE: ledger_pb2.TRANSACTION_TYPE_CLOSE,
}
_OPERATION_ACTION = {
    Operation.LOCK: Action.LOCK,
    Operation.UNLOCK: Action.UNLOCK,
    Operation.CLOSE: Action.CLOSE,
    Operation.BATCH_LOCK: Action.LOCK,
    Operation.BATCH_CLOSE: Action.CLOSE,
}

# Ledger rejection reasons -> the error the caller sees. Never names the organisation holding a lock.
_REJECTIONS: dict[str, type[FapiaoError] | tuple[type[FapiaoError], str]] = {
    "ALREADY_LOCKED": FailedPrecondition,
    "ALREADY_CLOSED": (FailedPrecondition, "ALREADY_REIMBURSED"),
    "ALREADY_REIMBURSED": FailedPrecondition,
    "CANCELLED": FailedPrecondition,
    "NOT_LOCKED": FailedPrecondition,
    "NOT_LOCK_HOLDER": PermissionDenied,
    "UNKNOWN_INVOICE": (NotFound, "INVOICE_NOT_FOUND"),
    "ORGANISATION_NOT_ALLOWED": (PermissionDenied, "NOT_INVOICE_BUYER"),
}
# A result saying "duplicate" describes a re-delivery, not the outcome: the first result is the outcome.
# A rejection of a record whose signature was never verified is not ours to believe: anyone able to write
# to the ledger topic could make one with our transaction id (GetTransactionResult returns it while no
# record has claimed the id).
NOT_AN_OUTCOME = {"DUPLICATE_TRANSACTION"} | UNVERIFIED_REJECTIONS
_MESSAGES = {
    "ALREADY_LOCKED": "the invoice is locked for reimbursement",
    "ALREADY_REIMBURSED": "the invoice has already been reimbursed",
    "CANCELLED": "the invoice has been cancelled (red-lettered)",
    "NOT_LOCKED": "the invoice is not locked",
    "NOT_LOCK_HOLDER": "only the organisation holding the lock may do this",
    "INVOICE_NOT_FOUND": "no such invoice on the ledger",
    "NOT_INVOICE_BUYER": "a company invoice can only be reimbursed by its buyer",
}


def _operation(name: str) -> Operation:
    try:
        return Operation(name)
    except ValueError:
        raise InvalidArgument("UNKNOWN_OPERATION", name[:40]) from None


def rejection_error(reason: str, invoice_number: str = "") -> FapiaoError:
    """The caller-facing error for a ledger rejection reason."""
    mapped = _REJECTIONS.get(reason)
    if mapped is None:
        return FailedPrecondition("LEDGER_REJECTED", f"the ledger rejected the transaction ({reason})")
    error_type, code = mapped if isinstance(mapped, tuple) else (mapped, reason)
    message = _MESSAGES.get(code, code.lower())
    if invoice_number:
        message = f"{message}: {invoice_number}"
    return error_type(code, message)


class ReimbursementHandlers:
    """Use cases of the reimbursement API; `ledger` is the port (real validators, or a fake in tests)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        ledger: LedgerPort,
        settings: HandlerSettings | None = None,
        facts_cache: FactsCache | None = None,
    ) -> None:
        self._pool = pool
        self._ledger = ledger
        self._settings = settings or HandlerSettings()
        # Shared with InvoiceVerifier: an invoice verified first is locked without another ledger read.
        self._facts_cache = facts_cache if facts_cache is not None else FactsCache()
        self._facts_inflight: dict[str, asyncio.Future[InvoiceFacts]] = {}

    # -- public use cases -------------------------------------------------------------------------

    async def execute(
        self,
        tax_id: str,
        operation: Operation | str,
        invoice_numbers: Sequence[str],
        idempotency_key: str,
        time_remaining_s: float | None,
    ) -> list[TxRow]:
        """Run LOCK / UNLOCK / CLOSE / BATCH_LOCK / BATCH_CLOSE; return the committed rows (one per invoice).

        `tax_id` comes from the verified client certificate; the organisation must be registered and active.
        Errors: INVALID_ARGUMENT (input), UNAUTHENTICATED, ALREADY_EXISTS IDEMPOTENCY_CONFLICT,
        NOT_FOUND INVOICE_NOT_FOUND, PERMISSION_DENIED (authorization), FAILED_PRECONDITION (ledger rejection),
        DEADLINE_EXCEEDED OUTCOME_PENDING (retry with the same key to learn the outcome).
        """
        started = time.monotonic()
        budget_s = self._budget(time_remaining_s)
        operation = _operation(operation)
        numbers = self._validate(invoice_numbers, idempotency_key)
        digest = store.request_digest(operation, numbers)
        caller, existing = await store.find_caller_and_request(self._pool, tax_id, idempotency_key)
        organisation = require_active(caller)
        if existing is None:
            try:
                rows = await self._authorize(organisation, operation, numbers, idempotency_key)
            except FapiaoError:
                # A concurrent request with this key may have been submitted meanwhile (and changed what
                # the checks read, e.g. closed the invoice): then this one is its retry.
                existing = await store.find_request(self._pool, tax_id, idempotency_key)
                if existing is None:
                    raise
                rows = []
        if existing is None:
            for row in rows:
                row.idempotency_key = idempotency_key
            request_id = await self._persist_and_submit(tax_id, idempotency_key, operation, digest, rows)
            if request_id is not None:
                remaining = budget_s - (time.monotonic() - started)
                await self._await_outcomes(rows, remaining, check_ledger_first=False)
                return await self._finish(organisation, operation, request_id, rows, budget_s, started)
            # Lost a race with a concurrent request using the same key: continue as a retry.
            existing = await store.find_request(self._pool, tax_id, idempotency_key)
            assert existing is not None
        if existing.request_digest != digest or existing.operation != operation:
            raise AlreadyExists("IDEMPOTENCY_CONFLICT", "this idempotency key was already used for a different request")
        rows = await store.request_transactions(self._pool, existing.request_id)
        requested = [r for r in rows if r.purpose is Purpose.REQUESTED]
        pending = [r for r in requested if r.pending]
        if pending:
            remaining = budget_s - (time.monotonic() - started)
            await self._await_outcomes(pending, remaining, check_ledger_first=True)
        return await self._finish(organisation, operation, existing.request_id, requested, budget_s, started)

    # -- steps -----------------------------------------------------------------------------------

    def _budget(self, time_remaining_s: float | None) -> float:
        budget = self._settings.max_wait_s
        if time_remaining_s is not None:
            budget = min(budget, time_remaining_s - self._settings.deadline_margin_s)
        return max(0.0, budget)

    @staticmethod
    def _validate(invoice_numbers: Sequence[str], key: str) -> list[str]:
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise InvalidArgument(
                "INVALID_IDEMPOTENCY_KEY", "idempotency_key must be 1-128 characters of [A-Za-z0-9._:-]"
            )
        numbers = list(invoice_numbers)
        if not numbers:
            raise InvalidArgument("NO_INVOICES", "at least one invoice number is required")
        if len(numbers) > MAX_BATCH:
            raise InvalidArgument("BATCH_TOO_LARGE", f"at most {MAX_BATCH} invoices per batch")
        for number in numbers:
            require_invoice_number(number)
        if len(set(numbers)) != len(numbers):
            raise InvalidArgument("DUPLICATE_INVOICE", "each invoice may appear once per batch")
        return numbers

    async def _facts(self, invoice_number: str) -> InvoiceFacts:
        cached = self._facts_cache.get(invoice_number)
        if cached is not None:
            return cached
        # Single flight: concurrent requests for the same uncached invoice share one ledger read.
        inflight = self._facts_inflight.get(invoice_number)
        if inflight is None:
            inflight = asyncio.ensure_future(self._read_facts(invoice_number))
            self._facts_inflight[invoice_number] = inflight
            inflight.add_done_callback(lambda _: self._facts_inflight.pop(invoice_number, None))
        return await asyncio.shield(inflight)

    async def _read_facts(self, invoice_number: str) -> InvoiceFacts:
        # The state alone (no receipts): a pre-check, which the ledger repeats when the LOCK executes.
        response = await self._ledger.invoice_state(invoice_number, state_only=True)
        if response is None:
            raise NotFound("INVOICE_NOT_FOUND", f"no such invoice on the ledger: {invoice_number}")
        facts = facts_of(response.state)
        if not facts.are_of(invoice_number):
            # The read is one validator's word: an answer naming another invoice is a faulty validator,
            # and it must never make this service lock, unlock or close a different invoice.
            log.warning("a validator answered for another invoice", extra={"invoice_number": invoice_number})
            raise Unavailable("LEDGER_INCONSISTENT", "the ledger's answer names another invoice; retry")
        self._facts_cache.put(facts)
        return facts

    async def _authorize(
        self, organisation: Organisation, operation: Operation, numbers: list[str], idempotency_key: str
    ) -> list[TxRow]:
        """Check the caller may act on every invoice (all before anything is submitted); build rows."""
        action = _OPERATION_ACTION[operation]
        rows: list[TxRow] = []
        if action is Action.LOCK:
            facts = await asyncio.gather(*(self._facts(n) for n in numbers))
            for fact in facts:
                # An invoice issued to a tax id (a company's) belongs to that buyer; a personal one may go to
                # any registered organisation (the ledger lets only the first LOCK win). The ledger applies
                # the same rule when the LOCK executes (ORGANISATION_NOT_ALLOWED).
                if fact.buyer_tax_id and fact.buyer_tax_id != organisation.tax_id:
                    raise PermissionDenied(
                        "NOT_INVOICE_BUYER", f"a company invoice can only be locked by its buyer: {fact.invoice_number}"
                    )
            for position, fact in enumerate(facts):
                rows.append(
                    TxRow(str(uuid.uuid4()), position, Purpose.REQUESTED, action, fact.invoice_number, fact.invoice_id)
                )
            return rows
        # UNLOCK and CLOSE: only the lock holder. Every LOCK goes through this service, so an organisation
        # with no accepted (or still pending) LOCK on record cannot hold the lock: deny without a ledger
        # round trip. Otherwise the ledger decides in log order (NOT_LOCK_HOLDER, NOT_LOCKED, ...).
        held = await store.locked_invoice_ids(self._pool, organisation.tax_id, numbers)
        for number in numbers:
            if number not in held:
                raise rejection_error("NOT_LOCK_HOLDER", number)
        if operation is Operation.BATCH_CLOSE:
            await self._precheck_batch_close(organisation, numbers, idempotency_key)
        return [
            TxRow(str(uuid.uuid4()), position, Purpose.REQUESTED, action, number, held[number])
            for position, number in enumerate(numbers)
        ]

    async def _precheck_batch_close(self, organisation: Organisation, numbers: list[str], idempotency_key: str) -> None:
        """A CLOSE cannot be undone, so a batch is only submitted when every invoice is LOCKED by the caller now.

        Only the holder can unlock or close, and the holder's UNLOCKs and CLOSEs all pass through this
        service: one still in doubt (pending) or already accepted here may not be visible yet on the
        validator read below, so it refuses the batch first. After that, nothing but a concurrent
        cancellation by the issuer can change the state before the ledger decides (reported, see
        docs/reimbursement.md). A concurrent request with the same key is not an earlier request: it is
        this one, and the loser of the race continues as its retry.
        """
        unsettled = await store.latest_holder_actions(self._pool, organisation.tax_id, numbers, idempotency_key)
        for number in numbers:
            action, state = unsettled.get(number, (Action.LOCK, TxState.ACCEPTED))
            if state is TxState.PENDING:
                raise FailedPrecondition(
                    "EARLIER_REQUEST_PENDING",
                    f"an earlier {action.lower()} of {number} is not decided yet: retry it with its key first",
                )
            if action is Action.UNLOCK and state is TxState.ACCEPTED:
                raise rejection_error("NOT_LOCKED", number)
            if action is Action.CLOSE and state is TxState.ACCEPTED:
                raise rejection_error("ALREADY_CLOSED", number)
        states = await asyncio.gather(*(self._ledger.invoice_state(n, state_only=True) for n in numbers))
        for number, response in zip(numbers, states, strict=True):
            if response is None:
                raise NotFound("INVOICE_NOT_FOUND", f"no such invoice on the ledger: {number}")
            status = response.state.status
            if status == ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED:
                raise rejection_error("CANCELLED", number)
            if status == ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED:
                raise rejection_error("NOT_LOCKED", number)
            if response.state.lock_holder_tax_id != organisation.tax_id:
                raise rejection_error("NOT_LOCK_HOLDER", number)
            if status == ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED:
                raise rejection_error("ALREADY_CLOSED", number)

    async def _persist_and_submit(
        self, tax_id: str, key: str, operation: Operation, digest: bytes, rows: list[TxRow]
    ) -> int | None:
        # The request, its transactions and their signed ledger transactions (outbox) in one statement.
        events = self._ledger.transaction_events([transaction_body(tax_id, row) for row in rows])
        return await store.insert_request_with_transactions(self._pool, tax_id, key, operation, digest, rows, events)

    async def _await_outcomes(self, rows: list[TxRow], timeout_s: float, *, check_ledger_first: bool) -> None:
        """Fill in the outcome of pending rows: from the results topic, else (retry, timeout) from the ledger."""
        pending = {r.transaction_id: r for r in rows if r.pending}
        if not pending:
            return
        decided: list[ledger_pb2.TransactionResult] = []
        now = datetime.now(UTC)
        if check_ledger_first:
            decided += await ask_ledger(self._ledger, {t: r.invoice_id for t, r in pending.items()})
        for result in decided:
            store.apply_result(pending.pop(result.transaction_id), result, now)

        async def wait(seconds: float) -> None:
            arrived = await self._ledger.wait_results({t: r.invoice_id for t, r in pending.items()}, seconds)
            arrived = {t: r for t, r in arrived.items() if r.rejection_reason not in NOT_AN_OUTCOME}
            for tx_id in list(pending):
                if tx_id in arrived:
                    store.apply_result(pending.pop(tx_id), arrived[tx_id], now)
                    decided.append(arrived[tx_id])

        timeout_s = max(0.0, timeout_s)
        if pending:
            await wait(timeout_s - min(self._settings.answer_reserve_s, timeout_s / 2))
        if pending and timeout_s > 0:
            async with self._pool.acquire() as conn:
                if await self._ledger.unsubmitted(conn, list(pending)):
                    return  # still in the outbox: Kafka does not take writes (_finish answers UNAVAILABLE)
        if pending and not check_ledger_first and timeout_s > 0:
            # The result may have passed before this process was reading (e.g. a restart); ask once before giving up.
            late = await ask_ledger(self._ledger, {t: r.invoice_id for t, r in pending.items()})
            for result in late:
                store.apply_result(pending.pop(result.transaction_id), result, now)
            decided += late
        if decided:
            await store.record_outcomes(self._pool, decided, now)

    async def _finish(
        self,
        organisation: Organisation,
        operation: Operation,
        request_id: int,
        rows: list[TxRow],
        budget_s: float,
        started: float,
    ) -> list[TxRow]:
        pending = [r for r in rows if r.pending]
        if pending:
            async with self._pool.acquire() as conn:
                waiting = await self._ledger.unsubmitted(conn, [r.transaction_id for r in pending])
            if waiting:
                # Kept in the outbox, it reaches the ledger once Kafka takes writes again.
                raise Unavailable(
                    "LEDGER_LOG_UNAVAILABLE",
                    "the ledger's transaction log does not accept writes now (Kafka unreachable or below its"
                    " in-sync replicas); the request is kept: retry with the same idempotency key",
                )
            raise DeadlineExceeded(
                "OUTCOME_PENDING", "the ledger has not decided yet; retry with the same idempotency key"
            )
        rejected = [r for r in rows if r.state is TxState.REJECTED]
        if not rejected:
            return rows
        if operation is Operation.BATCH_LOCK:
            # Shielded: a caller that hangs up now must not leave the locks the batch won in place (and a
            # crash before this point is caught by the pending resolver's sweep at start).
            await asyncio.shield(
                self._compensate(organisation, request_id, rows, budget_s - (time.monotonic() - started))
            )
        first = rejected[0]
        error = rejection_error(first.rejection_reason, first.invoice_number)
        closed = sum(1 for r in rows if r.action is Action.CLOSE and r.state is TxState.ACCEPTED)
        if operation is Operation.BATCH_CLOSE and closed:
            # A CLOSE cannot be undone: say what did happen (an issuer cancelled an invoice meanwhile).
            error.message = f"batch partly applied: {closed} of {len(rows)} invoices closed; {error.message}"
        elif operation in (Operation.BATCH_LOCK, Operation.BATCH_CLOSE):
            # One invoice failed: the whole batch fails (BATCH_LOCK undid the locks it won, see _compensate).
            error.message = f"batch not applied: {error.message}"
        raise error

    async def _compensate(
        self, organisation: Organisation, request_id: int, rows: list[TxRow], timeout_s: float
    ) -> None:
        """Undo the LOCKs a failed batch won (see `submit_compensation`), then await the undo."""
        fresh = await submit_compensation(self._pool, self._ledger, organisation.tax_id, request_id, rows)
        if fresh:
            # Best effort to answer after the undo is final; it is durable in the outbox either way.
            await self._await_outcomes(fresh, timeout_s, check_ledger_first=False)


def transaction_body(tax_id: str, row: TxRow) -> ledger_pb2.TransactionBody:
    body = ledger_pb2.TransactionBody(
        transaction_id=row.transaction_id, type=_TX_TYPE[row.action], invoice_id=row.invoice_id
    )
    if row.action is Action.LOCK:
        body.lock.organisation_tax_id = tax_id
    elif row.action is Action.UNLOCK:
        body.unlock.organisation_tax_id = tax_id
    else:
        body.close.organisation_tax_id = tax_id
    body.submitted_at.GetCurrentTime()
    return body


async def submit_compensation(
    pool: asyncpg.Pool, ledger: LedgerPort, tax_id: str, request_id: int, rows: list[TxRow]
) -> list[TxRow]:
    """Submit UNLOCKs for the LOCKs a failed BATCH_LOCK won, at most once (unique per request, position
    and purpose): whoever gets here first (the request's handler, or the pending resolver when nobody
    was waiting) submits them. Returns the rows this call inserted."""
    won = [
        r for r in rows if r.purpose is Purpose.REQUESTED and r.state is TxState.ACCEPTED and r.action is Action.LOCK
    ]
    if not won:
        return []
    undo = [
        TxRow(str(uuid.uuid4()), r.position, Purpose.COMPENSATION, Action.UNLOCK, r.invoice_number, r.invoice_id)
        for r in won
    ]
    async with pool.acquire() as conn, conn.transaction():
        fresh = await store.insert_transactions(conn, request_id, tax_id, undo)
        if fresh:
            await ledger.submit(conn, [transaction_body(tax_id, u) for u in fresh])
    return fresh


async def ask_ledger(ledger: LedgerPort, transactions: dict[str, str]) -> list[ledger_pb2.TransactionResult]:
    """The final outcomes the ledger has for `transactions` (transaction id -> invoice id). Neither a
    re-delivery, nor a rejection of an unverified record (`NOT_AN_OUTCOME`), nor the result of another
    invoice's transaction (transaction ids are unique per chain) counts as one."""
    found = await asyncio.gather(*(ledger.transaction_result(t) for t in transactions))
    return [
        r
        for r in found
        if r is not None and r.rejection_reason not in NOT_AN_OUTCOME and r.invoice_id == transactions[r.transaction_id]
    ]
