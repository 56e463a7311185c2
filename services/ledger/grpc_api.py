"""LedgerService: state, blocks and offline-verifiable receipts served by one validator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import grpc
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2, ledger_service_pb2_grpc
from fapiao_runtime.admission import AdmissionGate
from fapiao_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable

from ledger import reads
from ledger.audit import audit_chain
from ledger.metrics import BLOCK_STREAM_BLOCKS_SENT, BLOCK_STREAMS_OPENED
from ledger.validator import Validator

T = TypeVar("T")

MAX_ID_LENGTH = 128
STREAM_POLL_S = 0.5


def _check_id(value: str, field: str) -> None:
    """INVALID_<FIELD> (INVALID_INVOICE_ID, INVALID_INVOICE_NUMBER, INVALID_TRANSACTION_ID) unless 1 to
    MAX_ID_LENGTH characters; which characters a request may hold at all is the runtime's check."""
    if not value or len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"INVALID_{field.upper()}", f"{field} must be 1..{MAX_ID_LENGTH} characters")


class LedgerServicer(ledger_service_pb2_grpc.LedgerServiceServicer):
    def __init__(self, validator: Validator) -> None:
        self._validator = validator
        self._pool = validator.pool
        self._trees = reads.BlockTrees()
        # An audit re-verifies a whole chain (every hash and signature): one at a time per validator, and
        # any other is refused while it runs, so no caller can tie up the validator's CPU or wait long.
        self._audits = AdmissionGate(
            1, 0, lambda: ResourceExhausted("AUDIT_BUSY", "an audit of this validator is running; retry later")
        )

    async def _read_settled(
        self, read: Callable[[asyncpg.Connection], Awaitable[T]], missing: Callable[[T], bool]
    ) -> T:
        """`read`, and once more if what it read is `missing` something while this validator has a block
        it signed or finality it decided not stored yet (signatures and results go out first): a client
        holding a result then gets it from any validator that signed the block. No connection is held
        while waiting."""
        async with self._pool.acquire() as conn:
            value = await read(conn)
        if missing(value) and await self._validator.wait_pending_writes():
            async with self._pool.acquire() as conn:
                value = await read(conn)
        return value

    async def _receipts(self, transaction_ids: list[str]) -> dict[str, tuple[bool, ledger_pb2.Receipt | None]]:
        """reads.transaction_receipt of each id, read again if one is not final yet (`_read_settled`)."""

        async def read(conn: asyncpg.Connection) -> dict[str, tuple[bool, ledger_pb2.Receipt | None]]:
            return {t: await reads.transaction_receipt(conn, t, self._trees) for t in transaction_ids}

        return await self._read_settled(read, lambda found: any(r is None for _, r in found.values()))

    def _check_chain(self, chain_id: int) -> None:
        if not self._validator.loaded.is_set():
            raise Unavailable("STARTING", "the validator is loading its chains; retry shortly")
        if not self._validator.has_chain(chain_id):
            raise InvalidArgument("UNKNOWN_CHAIN", f"chain {chain_id} does not exist")

    async def GetInvoiceState(
        self, request: ledger_service_pb2.GetInvoiceStateRequest, context: grpc.aio.ServicerContext
    ) -> ledger_service_pb2.GetInvoiceStateResponse:
        lookup = request.WhichOneof("lookup")
        if lookup is None:
            raise InvalidArgument("MISSING_LOOKUP", "invoice_id or invoice_number is required")
        _check_id(getattr(request, lookup), lookup)
        row = await self._read_settled(
            lambda conn: reads.invoice_row(conn, request.invoice_id, request.invoice_number), lambda r: r is None
        )
        if row is None:
            raise NotFound("UNKNOWN_INVOICE", "the ledger has no such invoice")
        response = ledger_service_pb2.GetInvoiceStateResponse(
            state=ledger_pb2.InvoiceState.FromString(bytes(row["state"]))
        )
        if request.state_only:
            return response
        # A fresh invoice's last transaction is its ISSUE: one receipt serves both.
        found = await self._receipts(
            [tx_id for tx_id in dict.fromkeys((row["last_transaction_id"], row["issue_transaction_id"])) if tx_id]
        )
        for tx_id, target in (
            (row["last_transaction_id"], response.receipt),
            (row["issue_transaction_id"], response.issue_receipt),
        ):
            receipt = found[tx_id][1] if tx_id else None
            if receipt is not None:
                target.CopyFrom(receipt)
        return response

    async def GetBlock(
        self, request: ledger_service_pb2.GetBlockRequest, context: grpc.aio.ServicerContext
    ) -> ledger_service_pb2.GetBlockResponse:
        self._check_chain(request.chain_id)
        async with self._pool.acquire() as conn:
            block = await reads.load_block(conn, request.chain_id, request.height)
        if block is None:
            raise NotFound("UNKNOWN_BLOCK", f"no block {request.height} on chain {request.chain_id}")
        return ledger_service_pb2.GetBlockResponse(block=block)

    async def StreamBlocks(
        self, request: ledger_service_pb2.StreamBlocksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_service_pb2.StreamBlocksResponse]:
        """Final blocks from from_height on, in order, then new ones as they become final."""
        self._check_chain(request.chain_id)
        BLOCK_STREAMS_OPENED.inc()
        height = max(1, request.from_height)
        while True:
            async with self._pool.acquire() as conn:
                tip = await reads.final_tip(conn, request.chain_id)
                blocks: list[ledger_pb2.Block] = []
                while height <= tip and len(blocks) < 50:
                    block = await reads.load_block(conn, request.chain_id, height)
                    if block is None or not block.final:
                        break
                    blocks.append(block)
                    height += 1
            for block in blocks:
                BLOCK_STREAM_BLOCKS_SENT.inc()
                yield ledger_service_pb2.StreamBlocksResponse(block=block)
            if blocks:
                continue
            event = self._validator.block_event
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=STREAM_POLL_S)

    async def GetTransactionResult(
        self, request: ledger_service_pb2.GetTransactionResultRequest, context: grpc.aio.ServicerContext
    ) -> ledger_service_pb2.GetTransactionResultResponse:
        _check_id(request.transaction_id, "transaction_id")
        seen, receipt = (await self._receipts([request.transaction_id]))[request.transaction_id]
        if not seen:
            raise NotFound("UNKNOWN_TRANSACTION", "the ledger has not seen this transaction")
        if receipt is None:
            raise FailedPrecondition("NOT_FINAL", "the transaction's block is not final yet")
        return ledger_service_pb2.GetTransactionResultResponse(
            result=ledger_pb2.TransactionResult.FromString(receipt.result), receipt=receipt
        )

    async def AuditChain(
        self, request: ledger_service_pb2.AuditChainRequest, context: grpc.aio.ServicerContext
    ) -> ledger_service_pb2.AuditChainResponse:
        self._check_chain(request.chain_id)
        settings = self._validator.settings
        async with self._audits.enter():
            return await audit_chain(
                self._pool, request.chain_id, settings.validator_keys, settings.quorum, settings.authority_keys
            )
