"""gRPC edge of the reimbursement API: authenticate the caller, parse, call a handler, map the outcome."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

import asyncpg
import grpc
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao.reimbursement.v1 import reimbursement_service_pb2_grpc as rpb_grpc
from fapiao_runtime.errors import InvalidArgument

from reimbursement import store
from reimbursement.handlers import ReimbursementHandlers
from reimbursement.identity import authenticate, peer_tax_id
from reimbursement.store import Action, Operation, TxRow
from reimbursement.verification import STATUS_FROM_LEDGER, InvoiceVerifier

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100

_ACTIONS = {
    Action.LOCK: rpb.REIMBURSEMENT_ACTION_LOCK,
    Action.UNLOCK: rpb.REIMBURSEMENT_ACTION_UNLOCK,
    Action.CLOSE: rpb.REIMBURSEMENT_ACTION_CLOSE,
}


def outcome_of(row: TxRow) -> rpb.ReimbursementOutcome:
    outcome = rpb.ReimbursementOutcome(
        invoice_number=row.invoice_number,
        status=STATUS_FROM_LEDGER.get(row.ledger_status, rpb.REIMBURSEMENT_STATUS_UNSPECIFIED),
        transaction_id=row.transaction_id,
        ledger_chain_id=row.chain_id,
        ledger_height=row.height,
        action=_ACTIONS[row.action],
        idempotency_key=row.idempotency_key,
        pending=row.pending,
        rejection_reason=row.rejection_reason,
        reimbursable_fen=row.reimbursable_fen,
    )
    if row.decided_at is not None:
        outcome.decided_at.FromDatetime(row.decided_at)
    return outcome


def page_token(request_id: int, position: int) -> str:
    """ListReimbursements' opaque cursor: the (request id, position) of the last row of a page."""
    return base64.urlsafe_b64encode(struct.pack(">qi", request_id, position)).decode()


def parse_page_token(token: str) -> tuple[int, int] | None:
    """The (request id, position) cursor of a token `page_token` wrote; INVALID_PAGE_TOKEN for
    anything else (not 12 bytes of base64, or a negative id or position, which no token carries)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode())
        request_id, position = struct.unpack(">qi", raw)
    except (ValueError, struct.error):
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token was not returned by this API") from None
    if request_id < 0 or position < 0:
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token was not returned by this API")
    return int(request_id), int(position)


class ReimbursementServicer(rpb_grpc.ReimbursementServiceServicer):
    def __init__(self, pool: asyncpg.Pool, handlers: ReimbursementHandlers, verifier: InvoiceVerifier) -> None:
        self._pool = pool
        self._handlers = handlers
        self._verifier = verifier

    async def _run(
        self, context: grpc.aio.ServicerContext, operation: Operation, numbers: Sequence[str], key: str
    ) -> list[TxRow]:
        # Authentication (registered, not revoked) happens inside, in the same query as the idempotency lookup.
        return await self._handlers.execute(peer_tax_id(context), operation, numbers, key, context.time_remaining())

    async def VerifyInvoice(
        self, request: rpb.VerifyInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> rpb.VerifyInvoiceResponse:
        organisation = await authenticate(context, self._pool)
        return await self._verifier.verify(organisation, request)

    async def LockInvoice(
        self, request: rpb.LockInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> rpb.LockInvoiceResponse:
        rows = await self._run(context, Operation.LOCK, [request.invoice_number], request.idempotency_key)
        return rpb.LockInvoiceResponse(outcome=outcome_of(rows[0]))

    async def UnlockInvoice(
        self, request: rpb.UnlockInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> rpb.UnlockInvoiceResponse:
        rows = await self._run(context, Operation.UNLOCK, [request.invoice_number], request.idempotency_key)
        return rpb.UnlockInvoiceResponse(outcome=outcome_of(rows[0]))

    async def CloseInvoice(
        self, request: rpb.CloseInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> rpb.CloseInvoiceResponse:
        rows = await self._run(context, Operation.CLOSE, [request.invoice_number], request.idempotency_key)
        return rpb.CloseInvoiceResponse(outcome=outcome_of(rows[0]))

    async def BatchLockInvoices(
        self, request: rpb.BatchLockInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> rpb.BatchLockInvoicesResponse:
        rows = await self._run(context, Operation.BATCH_LOCK, request.invoice_numbers, request.idempotency_key)
        return rpb.BatchLockInvoicesResponse(outcomes=[outcome_of(r) for r in rows])

    async def BatchCloseInvoices(
        self, request: rpb.BatchCloseInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> rpb.BatchCloseInvoicesResponse:
        rows = await self._run(context, Operation.BATCH_CLOSE, request.invoice_numbers, request.idempotency_key)
        return rpb.BatchCloseInvoicesResponse(outcomes=[outcome_of(r) for r in rows])

    async def ListReimbursements(
        self, request: rpb.ListReimbursementsRequest, context: grpc.aio.ServicerContext
    ) -> rpb.ListReimbursementsResponse:
        organisation = await authenticate(context, self._pool)
        if request.page_size < 0:
            raise InvalidArgument("INVALID_PAGE_SIZE", "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        found = await store.list_transactions(
            self._pool, organisation.tax_id, parse_page_token(request.page_token), size + 1
        )
        reply = rpb.ListReimbursementsResponse(reimbursements=[outcome_of(row) for _, row in found[:size]])
        if len(found) > size:
            request_id, row = found[size - 1]
            reply.next_page_token = page_token(request_id, row.position)
        return reply
