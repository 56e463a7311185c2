"""Invoice rows: inserting new invoices with their ledger transactions, and reading them as protos."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.errors import InvalidArgument, NotFound

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
MAX_BIGINT = 2**63 - 1
_PAGE_TOKEN_TEXT = re.compile(r"v1:([0-9]{1,19})")

_SELECT = """
SELECT i.invoice_id, i.status, i.rejection_reason, i.reimbursable_fen, i.signed, i.ledger_chain_id,
       i.ledger_height, i.seq,
       COALESCE((SELECT array_agg(r.invoice_number ORDER BY r.seq) FROM invoices r
                 WHERE r.original_invoice_id = i.invoice_id), '{}') AS red_letters
FROM invoices i
"""


@dataclass(frozen=True)
class NewInvoice:
    """An invoice ready to insert, with the ledger transaction that submits it."""

    invoice_id: uuid.UUID
    body: invoice_pb2.InvoiceBody
    signed: invoice_pb2.SignedInvoice
    original_invoice_id: uuid.UUID | None
    transaction_id: uuid.UUID
    transaction_type: int
    # For a red letter: the transaction is about the original invoice; amount is the reversed amount.
    ledger_invoice_id: uuid.UUID
    amount_fen: int


async def allocate_sequences(conn: asyncpg.Connection, region_code: str, year: int, count: int) -> int:
    """Reserve `count` consecutive sequence numbers of (region, year); return the first.

    The counter row stays locked until the caller's transaction ends, and a rollback returns the numbers:
    numbers are gapless and unique. Lock counters in (region, year) order to avoid deadlocks.
    """
    assert count > 0
    last = await conn.fetchval(
        "INSERT INTO invoice_counters AS c (region_code, year, last_sequence) VALUES ($1, $2, $3)"
        " ON CONFLICT (region_code, year) DO UPDATE SET last_sequence = c.last_sequence + EXCLUDED.last_sequence"
        " RETURNING last_sequence",
        region_code,
        year,
        count,
    )
    return int(last) - count + 1


async def insert_invoices(conn: asyncpg.Connection, invoices: Sequence[NewInvoice]) -> None:
    """Insert invoices (status PENDING) and their pending ledger transactions."""
    await conn.executemany(
        "INSERT INTO invoices (invoice_id, invoice_number, kind, merchant_id, buyer_tax_id, payment_id,"
        " original_invoice_id, status, total_fen, reimbursable_fen, signed)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        [
            (
                n.invoice_id,
                n.body.invoice_number,
                n.body.kind,
                n.body.merchant_id,
                n.body.buyer.tax_id,
                n.body.payment_id,
                n.original_invoice_id,
                invoice_pb2.INVOICE_STATUS_PENDING,
                n.body.total_fen,
                max(0, n.body.total_fen),
                n.signed.SerializeToString(deterministic=True),
            )
            for n in invoices
        ],
    )
    await conn.executemany(
        "INSERT INTO ledger_transactions (transaction_id, invoice_id, type, red_letter_invoice_id, amount_fen)"
        " VALUES ($1, $2, $3, $4, $5)",
        [
            (
                n.transaction_id,
                n.ledger_invoice_id,
                n.transaction_type,
                n.invoice_id if n.original_invoice_id else None,
                n.amount_fen,
            )
            for n in invoices
        ],
    )


def to_proto(row: asyncpg.Record) -> invoice_pb2.Invoice:
    signed = invoice_pb2.SignedInvoice.FromString(row["signed"])
    return invoice_pb2.Invoice(
        signed=signed,
        body=invoice_pb2.InvoiceBody.FromString(signed.body),
        status=row["status"],
        rejection_reason=row["rejection_reason"],
        red_letter_invoice_numbers=list(row["red_letters"]),
        reimbursable_fen=row["reimbursable_fen"],
        ledger_height=row["ledger_height"],
        ledger_chain_id=row["ledger_chain_id"],
    )


async def invoices_by_id(
    conn: asyncpg.Connection, invoice_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, invoice_pb2.Invoice]:
    rows = await conn.fetch(_SELECT + " WHERE i.invoice_id = ANY($1::uuid[])", list(invoice_ids))
    return {r["invoice_id"]: to_proto(r) for r in rows}


async def get_invoice(
    conn: asyncpg.Connection, *, invoice_id: str = "", invoice_number: str = ""
) -> invoice_pb2.Invoice:
    """By id or number; raises NotFound(INVOICE_NOT_FOUND) or InvalidArgument(MISSING_LOOKUP)."""
    if invoice_id:
        try:
            parsed = uuid.UUID(invoice_id)
        except ValueError:
            raise NotFound("INVOICE_NOT_FOUND", "no such invoice") from None
        row = await conn.fetchrow(_SELECT + " WHERE i.invoice_id = $1", parsed)
    elif invoice_number:
        row = await conn.fetchrow(_SELECT + " WHERE i.invoice_number = $1", invoice_number)
    else:
        raise InvalidArgument("MISSING_LOOKUP", "give invoice_id or invoice_number")
    if row is None:
        raise NotFound("INVOICE_NOT_FOUND", "no such invoice")
    return to_proto(row)


def _page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode()


def _after_seq(page_token: str) -> int:
    """The sequence number a page token continues after: exactly what `_page_token` writes ("v1:"
    and 1 to 19 ASCII digits, at most the largest bigint), else INVALID_PAGE_TOKEN."""
    if not page_token:
        return 0
    try:
        text = base64.urlsafe_b64decode(page_token.encode()).decode("ascii")
    except (ValueError, UnicodeError):
        text = ""
    issued = _PAGE_TOKEN_TEXT.fullmatch(text)
    if issued is None or int(issued[1]) > MAX_BIGINT:
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token was not issued by this service")
    return int(issued[1])


async def list_invoices(
    conn: asyncpg.Connection, *, buyer_tax_id: str = "", merchant_id: str = "", page_size: int = 0, page_token: str = ""
) -> tuple[list[invoice_pb2.Invoice], str]:
    """Invoices of a buyer or a merchant, oldest first, keyset-paginated.

    Raises InvalidArgument MISSING_FILTER, INVALID_PAGE_SIZE or INVALID_PAGE_TOKEN.
    """
    if page_size < 0 or page_size > PAGE_SIZE_MAX:
        raise InvalidArgument("INVALID_PAGE_SIZE", f"page_size must be 0..{PAGE_SIZE_MAX}")
    size = page_size or PAGE_SIZE_DEFAULT
    after = _after_seq(page_token)
    if buyer_tax_id:
        where, key = "i.buyer_tax_id = $1", buyer_tax_id
    elif merchant_id:
        where, key = "i.merchant_id = $1", merchant_id
    else:
        raise InvalidArgument("MISSING_FILTER", "give buyer_tax_id or merchant_id")
    rows = await conn.fetch(_SELECT + f" WHERE {where} AND i.seq > $2 ORDER BY i.seq LIMIT $3", key, after, size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return [to_proto(r) for r in rows], (_page_token(rows[-1]["seq"]) if more else "")
