"""Applying ledger outcomes (ledger.results.v1) to invoices: PENDING -> ISSUED / REJECTED, red letters.

Results of transactions this service did not submit (LOCK, CLOSE, ... by reimbursement) are ignored.
"""

from __future__ import annotations

import logging
import uuid

import asyncpg
from fapiao.common.v1 import envelope_pb2
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import make_envelope, outgoing, unpack
from fapiao_runtime.ledger_client import result_event_id
from fapiao_runtime.outbox import enqueue
from fapiao_runtime.topics import INVOICES

from invoice_minting.invoice_store import invoices_by_id

log = logging.getLogger(__name__)

PENDING, ACCEPTED, REJECTED = 0, 1, 2


async def on_result(conn: asyncpg.Connection, envelope: envelope_pb2.EventEnvelope, producer: str) -> None:
    await on_results(conn, [envelope], producer)


async def on_results(conn: asyncpg.Connection, envelopes: list[envelope_pb2.EventEnvelope], producer: str) -> None:
    """Apply ledger results (one, or a fetched batch) with one statement per kind of change.

    A transaction's first result decides it (only PENDING ones change); the rejection of a record whose
    signature was never verified (published under another event id) decides nothing. ISSUE accepted: the invoice
    becomes ISSUED (unless a red letter's outcome already moved it on) and InvoiceIssued is queued;
    rejected: REJECTED with the ledger's reason. Results of one invoice may arrive in any order (the
    results topic is keyed by transaction id) and each outcome is written to be correct in any order,
    so a batch's ISSUE outcomes are applied together, after its red-letter outcomes.
    """
    decided: dict[uuid.UUID, ledger_pb2.TransactionResult] = {}
    for envelope in envelopes:
        result = unpack(envelope, ledger_pb2.TransactionResult)
        try:
            transaction_id = uuid.UUID(result.transaction_id)
        except ValueError:
            continue
        if envelope.event_id != str(result_event_id(result.transaction_id)):
            # The rejection of a record whose signature was never verified: anyone able to write to the
            # ledger topic could make one with a copied id, so it decides nothing.
            log.warning(
                "ignoring the result of an unverified ledger record", extra={"transaction_id": str(transaction_id)}
            )
            continue
        # Copies of a result share an event id and arrive once.
        decided.setdefault(transaction_id, result)
    if not decided:
        return
    ids = list(decided)
    txs = await conn.fetch(
        "UPDATE ledger_transactions t SET status = r.status, rejection_reason = r.reason"
        " FROM unnest($1::uuid[], $2::smallint[], $3::text[]) AS r(transaction_id, status, reason)"
        " WHERE t.transaction_id = r.transaction_id AND t.status = $4 RETURNING t.*",
        ids,
        [ACCEPTED if decided[t].accepted else REJECTED for t in ids],
        [decided[t].rejection_reason for t in ids],
        PENDING,
    )
    issued: dict[uuid.UUID, ledger_pb2.TransactionResult] = {}
    refused: dict[uuid.UUID, ledger_pb2.TransactionResult] = {}
    for tx in txs:
        result = decided[tx["transaction_id"]]
        if tx["type"] != ledger_pb2.TRANSACTION_TYPE_ISSUE:
            await _red_letter_outcome(conn, tx, result)
        elif result.accepted:
            issued.setdefault(tx["invoice_id"], result)
        else:
            refused.setdefault(tx["invoice_id"], result)
    if issued:
        await _issued_all(conn, issued, producer)
    if refused:
        await conn.execute(
            "UPDATE invoices i SET status = $3, rejection_reason = r.reason, reimbursable_fen = 0"
            " FROM unnest($1::uuid[], $2::text[]) AS r(invoice_id, reason) WHERE i.invoice_id = r.invoice_id",
            list(refused),
            [r.rejection_reason or "REJECTED" for r in refused.values()],
            invoice_pb2.INVOICE_STATUS_REJECTED,
        )


async def _issued_all(
    conn: asyncpg.Connection, issued: dict[uuid.UUID, ledger_pb2.TransactionResult], producer: str
) -> None:
    """Accepted ISSUE results: PENDING invoices become ISSUED, each announced on invoices.v1."""
    ids = list(issued)
    await conn.execute(
        "UPDATE invoices i SET status = CASE WHEN i.status = $4 THEN $5 ELSE i.status END,"
        " ledger_chain_id = r.chain_id, ledger_height = r.height"
        " FROM unnest($1::uuid[], $2::int[], $3::bigint[]) AS r(invoice_id, chain_id, height)"
        " WHERE i.invoice_id = r.invoice_id",
        ids,
        [r.chain_id for r in issued.values()],
        [r.height for r in issued.values()],
        invoice_pb2.INVOICE_STATUS_PENDING,
        invoice_pb2.INVOICE_STATUS_ISSUED,
    )
    invoices = await invoices_by_id(conn, ids)
    await enqueue(
        conn,
        [
            outgoing(
                INVOICES.name,
                make_envelope(invoice_pb2.InvoiceIssued(invoice=invoices[i]), aggregate_id=str(i), producer=producer),
            )
            for i in ids
        ],
    )


async def _red_letter_outcome(
    conn: asyncpg.Connection, tx: asyncpg.Record, result: ledger_pb2.TransactionResult
) -> None:
    red_id = tx["red_letter_invoice_id"]
    if result.accepted:
        await conn.execute(
            "UPDATE invoices SET status = $2, ledger_chain_id = $3, ledger_height = $4 WHERE invoice_id = $1",
            red_id,
            invoice_pb2.INVOICE_STATUS_ISSUED,
            result.chain_id,
            result.height,
        )
        new_status = (
            invoice_pb2.INVOICE_STATUS_CANCELLED
            if tx["type"] == ledger_pb2.TRANSACTION_TYPE_CANCEL
            else invoice_pb2.INVOICE_STATUS_PARTIALLY_RED_LETTERED
        )
        # A CANCEL leaves nothing reimbursable, whatever other red-letter results did before it arrived.
        await conn.execute(
            "UPDATE invoices SET status = $2,"
            " reimbursable_fen = CASE WHEN $2 = $3 THEN 0 ELSE reimbursable_fen END"
            " WHERE invoice_id = $1 AND status <> $3",
            tx["invoice_id"],
            new_status,
            invoice_pb2.INVOICE_STATUS_CANCELLED,
        )
    else:
        await conn.execute(
            "UPDATE invoices SET status = $2, rejection_reason = $3 WHERE invoice_id = $1",
            red_id,
            invoice_pb2.INVOICE_STATUS_REJECTED,
            result.rejection_reason or "REJECTED",
        )
        # The reversal did not happen: give the amount back to the original, unless the original was
        # itself rejected or has been cancelled since (results of one invoice may arrive in any order).
        await conn.execute(
            "UPDATE invoices SET reimbursable_fen = reimbursable_fen + $2"
            " WHERE invoice_id = $1 AND status <> ALL($3::smallint[])",
            tx["invoice_id"],
            tx["amount_fen"],
            [invoice_pb2.INVOICE_STATUS_REJECTED, invoice_pb2.INVOICE_STATUS_CANCELLED],
        )
