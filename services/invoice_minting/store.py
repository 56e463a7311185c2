"""Every SQL statement of invoice_minting: a repository of named methods over one connection.

`UnitOfWork` opens the connection and the transaction of one unit of work (a handler's); the Kafka
consumers open theirs themselves (the processed-event row commits with the effect) and hand the
handlers a `MintingStore` over that connection. Methods that lock rows (FOR UPDATE, advisory locks)
hold them until the caller's transaction ends.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import enum
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import OutgoingEvent
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.outbox import enqueue

MAX_BIGINT = 2**63 - 1
_PAGE_TOKEN_TEXT = re.compile(r"v1:([0-9]{1,19})")

# Each new offer is announced on this channel at commit, which wakes GetClaimOfferByPayment calls
# waiting for it (offer_waiter), on any replica.
OFFERS_CHANNEL = "fapiao_claim_offers"


class SubmissionStatus(enum.IntEnum):
    """ledger_transactions.status: what the ledger decided about a transaction this service submitted."""

    PENDING = 0
    ACCEPTED = 1
    REJECTED = 2


@dataclass(frozen=True)
class IssuerKeyRow:
    key_id: str
    merchant_id: str
    public_key: bytes
    active: bool
    created_at: dt.datetime
    retired_at: dt.datetime | None


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


# The columns of a new claim_offers row, in the order of the tuples insert_offers takes.
OFFER_COLUMNS = (
    ("offer_id", "uuid"),
    ("payment_id", "text"),
    ("merchant_id", "text"),
    ("token_hash", "bytea"),
    ("token_sealed", "bytea"),
    ("amount_fen", "bigint"),
    ("payment", "bytea"),
    ("paid_at", "timestamptz"),
)
# Offers from arrays (one per column), expiring after $9 seconds, announced on $10 at commit.
# A payment that already has an offer keeps it.
_INSERT_OFFERS = (
    "WITH inserted AS (INSERT INTO claim_offers ("
    + ", ".join(name for name, _ in OFFER_COLUMNS)
    + ", expires_at) SELECT *, now() + make_interval(secs => $9) FROM unnest("
    + ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(OFFER_COLUMNS, 1))
    + ") ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id)"
    " SELECT payment_id, pg_notify($10, payment_id) FROM inserted"
)
_OFFER_VIEW = "SELECT o.*, m.legal_name FROM claim_offers o LEFT JOIN merchants m ON m.merchant_id = o.merchant_id"
# What a claim needs to decide and mint: the offer, its merchant's profile and active issuer key.
_OFFERS_TO_CLAIM = """
SELECT o.offer_id, o.token_hash, o.payment_id, o.merchant_id, o.amount_fen, o.payment, o.expires_at,
       o.refunded_fen, o.invoice_id, o.claim_idempotency_key, o.claim_request_hash,
       m.legal_name, m.tax_id, m.region_code, m.default_tax_classification_code, m.default_item_name,
       m.default_tax_rate_bp, k.key_id, k.private_key_sealed
FROM claim_offers o
LEFT JOIN merchants m ON m.merchant_id = o.merchant_id
LEFT JOIN issuer_keys k ON k.merchant_id = o.merchant_id AND k.active
WHERE o.token_hash = ANY($1::bytea[])
ORDER BY o.token_hash
FOR UPDATE OF o
"""
_INVOICE_VIEW = """
SELECT i.invoice_id, i.status, i.rejection_reason, i.reimbursable_fen, i.signed, i.ledger_chain_id,
       i.ledger_height, i.seq,
       COALESCE((SELECT array_agg(r.invoice_number ORDER BY r.seq) FROM invoices r
                 WHERE r.original_invoice_id = i.invoice_id), '{}') AS red_letters
FROM invoices i
"""


def invoice_from_row(row: asyncpg.Record) -> invoice_pb2.Invoice:
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


def page_token(seq: int) -> str:
    """The page token that continues after invoice `seq`."""
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode()


def after_seq(token: str) -> int:
    """The sequence number a page token continues after: exactly what `page_token` writes ("v1:" and
    1 to 19 ASCII digits, at most the largest bigint), 0 for no token, else INVALID_PAGE_TOKEN."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode("ascii")
    except (ValueError, UnicodeError):
        text = ""
    issued = _PAGE_TOKEN_TEXT.fullmatch(text)
    if issued is None or int(issued[1]) > MAX_BIGINT:
        raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token was not issued by this service")
    return int(issued[1])


class MintingStore:
    """The repository: named reads and writes of merchants, issuer keys, offers, invoices, ledger
    transactions and the outbox, all on the connection (and transaction) of one unit of work."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    # --- merchants ---------------------------------------------------------------------------------

    async def lock_merchant_tax_id(self, merchant_id: str) -> str | None:
        """The merchant's tax id (None when unknown), its row locked against concurrent changes."""
        tax_id: str | None = await self.conn.fetchval(
            "SELECT tax_id FROM merchants WHERE merchant_id = $1 FOR UPDATE", merchant_id
        )
        return tax_id

    async def upsert_merchant(self, profile: payments_pb2.MerchantRegistered) -> None:
        """Insert or replace the issuer profile (validated and normalised by the caller)."""
        await self.conn.execute(
            "INSERT INTO merchants AS m (merchant_id, legal_name, tax_id, region_code, default_tax_classification_code,"
            " default_item_name, default_tax_rate_bp) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (merchant_id) DO UPDATE SET legal_name = EXCLUDED.legal_name, tax_id = EXCLUDED.tax_id,"
            " region_code = EXCLUDED.region_code,"
            " default_tax_classification_code = EXCLUDED.default_tax_classification_code,"
            " default_item_name = EXCLUDED.default_item_name, default_tax_rate_bp = EXCLUDED.default_tax_rate_bp,"
            " updated_at = now()",
            profile.merchant_id,
            profile.legal_name,
            profile.tax_id,
            profile.region_code,
            profile.default_tax_classification_code,
            profile.default_item_name,
            profile.default_tax_rate_bp,
        )

    # --- issuer keys -------------------------------------------------------------------------------

    async def replace_active_issuer_key(
        self, merchant_id: str, key_id: str, public_key: bytes, private_key_sealed: bytes, subject_tax_id: str
    ) -> None:
        """Retire the merchant's active key (if any) and store `key_id` as the active one."""
        await self.conn.execute(
            "UPDATE issuer_keys SET active = false, retired_at = now() WHERE merchant_id = $1 AND active", merchant_id
        )
        await self.conn.execute(
            "INSERT INTO issuer_keys (key_id, merchant_id, public_key, private_key_sealed, subject_tax_id, active)"
            " VALUES ($1, $2, $3, $4, $5, true)",
            key_id,
            merchant_id,
            public_key,
            private_key_sealed,
            subject_tax_id,
        )

    async def issuer_keys(self, merchant_id: str) -> list[IssuerKeyRow]:
        """The merchant's keys, oldest first (public parts only)."""
        rows = await self.conn.fetch(
            "SELECT key_id, merchant_id, public_key, active, created_at, retired_at FROM issuer_keys"
            " WHERE merchant_id = $1 ORDER BY created_at, key_id",
            merchant_id,
        )
        return [IssuerKeyRow(**dict(r)) for r in rows]

    async def sealed_key_for_seller(self, merchant_id: str, seller_tax_id: str) -> tuple[str, bytes] | None:
        """(key id, sealed private key) of the active key registered for `seller_tax_id`, else of the
        newest retired one that was; None when no key of the merchant was."""
        row = await self.conn.fetchrow(
            "SELECT key_id, private_key_sealed FROM issuer_keys WHERE merchant_id = $1 AND subject_tax_id = $2"
            " ORDER BY active DESC, created_at DESC LIMIT 1",
            merchant_id,
            seller_tax_id,
        )
        return None if row is None else (row["key_id"], row["private_key_sealed"])

    # --- claim offers ------------------------------------------------------------------------------

    async def insert_offers(self, rows: Sequence[tuple[object, ...]], ttl_s: float) -> set[str]:
        """Insert new offers (tuples in OFFER_COLUMNS order); return the payment ids that got theirs now."""
        columns = [list(column) for column in zip(*rows, strict=True)]
        inserted = await self.conn.fetch(_INSERT_OFFERS, *columns, float(ttl_s), OFFERS_CHANNEL)
        return {r["payment_id"] for r in inserted}

    async def offer_by_token(self, token_hash: bytes) -> asyncpg.Record | None:
        """The offer (claim_offers columns and the merchant's legal_name) of a token hash."""
        row: asyncpg.Record | None = await self.conn.fetchrow(_OFFER_VIEW + " WHERE o.token_hash = $1", token_hash)
        return row

    async def offer_by_payment(self, payment_id: str, merchant_id: str) -> asyncpg.Record | None:
        """The offer (as offer_by_token) of a merchant's payment."""
        row: asyncpg.Record | None = await self.conn.fetchrow(
            _OFFER_VIEW + " WHERE o.payment_id = $1 AND o.merchant_id = $2", payment_id, merchant_id
        )
        return row

    async def lock_offers_to_claim(self, token_hashes: Sequence[bytes]) -> dict[bytes, asyncpg.Record]:
        """The offers of these token hashes with their merchant and active key, locked in token-hash order."""
        rows = await self.conn.fetch(_OFFERS_TO_CLAIM, list(token_hashes))
        return {r["token_hash"]: r for r in rows}

    async def mark_offers_claimed(self, claims: Sequence[tuple[uuid.UUID, uuid.UUID, str, bytes]]) -> None:
        """(offer id, invoice id, idempotency key, request hash) of each claimed offer."""
        await self.conn.executemany(
            "UPDATE claim_offers SET invoice_id = $2, claim_idempotency_key = $3, claim_request_hash = $4,"
            " claimed_at = now() WHERE offer_id = $1",
            claims,
        )

    async def lock_offer_of_payment(self, payment_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self.conn.fetchrow(
            "SELECT offer_id, merchant_id, amount_fen, refunded_fen, invoice_id FROM claim_offers WHERE payment_id = $1"
            " FOR UPDATE",
            payment_id,
        )
        return row

    async def set_offer_refunded(self, offer_id: uuid.UUID, refunded_fen: int) -> None:
        await self.conn.execute("UPDATE claim_offers SET refunded_fen = $2 WHERE offer_id = $1", offer_id, refunded_fen)

    # --- invoices ----------------------------------------------------------------------------------

    async def allocate_sequences(self, region_code: str, year: int, count: int) -> int:
        """Reserve `count` consecutive sequence numbers of (region, year); return the first.

        The counter row stays locked until the transaction ends, and a rollback returns the numbers:
        numbers are gapless and unique. Lock counters in (region, year) order to avoid deadlocks.
        """
        assert count > 0
        last = await self.conn.fetchval(
            "INSERT INTO invoice_counters AS c (region_code, year, last_sequence) VALUES ($1, $2, $3)"
            " ON CONFLICT (region_code, year) DO UPDATE SET last_sequence = c.last_sequence + EXCLUDED.last_sequence"
            " RETURNING last_sequence",
            region_code,
            year,
            count,
        )
        return int(last) - count + 1

    async def insert_invoices(self, invoices: Sequence[NewInvoice]) -> None:
        """Insert invoices (status PENDING) and their pending ledger transactions."""
        await self.conn.executemany(
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
        await self.conn.executemany(
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

    async def invoices_by_id(self, invoice_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, invoice_pb2.Invoice]:
        rows = await self.conn.fetch(_INVOICE_VIEW + " WHERE i.invoice_id = ANY($1::uuid[])", list(invoice_ids))
        return {r["invoice_id"]: invoice_from_row(r) for r in rows}

    async def invoice_by_id(self, invoice_id: uuid.UUID) -> invoice_pb2.Invoice | None:
        row = await self.conn.fetchrow(_INVOICE_VIEW + " WHERE i.invoice_id = $1", invoice_id)
        return None if row is None else invoice_from_row(row)

    async def invoice_by_number(self, invoice_number: str) -> invoice_pb2.Invoice | None:
        row = await self.conn.fetchrow(_INVOICE_VIEW + " WHERE i.invoice_number = $1", invoice_number)
        return None if row is None else invoice_from_row(row)

    async def invoice_page(
        self, *, buyer_tax_id: str = "", merchant_id: str = "", after: int, size: int
    ) -> tuple[list[invoice_pb2.Invoice], str]:
        """Up to `size` invoices of a buyer (or else a merchant) after sequence `after`, oldest first,
        and the token of the next page ("" when this is the last)."""
        where, key = ("i.buyer_tax_id = $1", buyer_tax_id) if buyer_tax_id else ("i.merchant_id = $1", merchant_id)
        rows = await self.conn.fetch(
            _INVOICE_VIEW + f" WHERE {where} AND i.seq > $2 ORDER BY i.seq LIMIT $3", key, after, size + 1
        )
        more = len(rows) > size
        rows = rows[:size]
        return [invoice_from_row(r) for r in rows], (page_token(rows[-1]["seq"]) if more else "")

    # --- red letters -------------------------------------------------------------------------------

    async def lock_red_letter_key(self, merchant_id: str, idempotency_key: str) -> None:
        """Make requests with one idempotency key wait for each other until the first commits."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"red-letter:{merchant_id}:{idempotency_key}"
        )

    async def red_letter_request(self, merchant_id: str, idempotency_key: str) -> asyncpg.Record | None:
        """(request_hash, red_letter_invoice_id, original_invoice_id) of an earlier request with this key."""
        row: asyncpg.Record | None = await self.conn.fetchrow(
            "SELECT r.request_hash, r.red_letter_invoice_id, i.original_invoice_id FROM red_letter_requests r"
            " JOIN invoices i ON i.invoice_id = r.red_letter_invoice_id"
            " WHERE r.merchant_id = $1 AND r.idempotency_key = $2",
            merchant_id,
            idempotency_key,
        )
        return row

    async def lock_invoice(
        self, *, invoice_id: uuid.UUID | None = None, invoice_number: str = ""
    ) -> asyncpg.Record | None:
        """The invoices row by id (or else by number), locked."""
        if invoice_id is not None:
            row: asyncpg.Record | None = await self.conn.fetchrow(
                "SELECT * FROM invoices WHERE invoice_id = $1 FOR UPDATE", invoice_id
            )
        else:
            row = await self.conn.fetchrow(
                "SELECT * FROM invoices WHERE invoice_number = $1 FOR UPDATE", invoice_number
            )
        return row

    async def counting_red_letters(self, original_invoice_id: uuid.UUID) -> list[invoice_pb2.InvoiceBody]:
        """The red letters that count against an invoice (all but those the ledger rejected), oldest first."""
        rows = await self.conn.fetch(
            "SELECT signed FROM invoices WHERE original_invoice_id = $1 AND status <> $2 ORDER BY seq",
            original_invoice_id,
            invoice_pb2.INVOICE_STATUS_REJECTED,
        )
        return [
            invoice_pb2.InvoiceBody.FromString(invoice_pb2.SignedInvoice.FromString(r["signed"]).body) for r in rows
        ]

    async def lower_reimbursable(self, invoice_id: uuid.UUID, amount_fen: int) -> None:
        await self.conn.execute(
            "UPDATE invoices SET reimbursable_fen = reimbursable_fen - $2 WHERE invoice_id = $1", invoice_id, amount_fen
        )

    async def record_red_letter_request(
        self, merchant_id: str, idempotency_key: str, request_hash: bytes, red_letter_invoice_id: uuid.UUID
    ) -> None:
        await self.conn.execute(
            "INSERT INTO red_letter_requests (merchant_id, idempotency_key, request_hash, red_letter_invoice_id)"
            " VALUES ($1, $2, $3, $4)",
            merchant_id,
            idempotency_key,
            request_hash,
            red_letter_invoice_id,
        )

    # --- ledger outcomes ---------------------------------------------------------------------------

    async def decide_transactions(
        self, decisions: Sequence[tuple[uuid.UUID, SubmissionStatus, str]]
    ) -> list[asyncpg.Record]:
        """(transaction id, status, rejection reason) of each result; only PENDING transactions change.
        Returns the ledger_transactions rows that changed now."""
        rows: list[asyncpg.Record] = await self.conn.fetch(
            "UPDATE ledger_transactions t SET status = r.status, rejection_reason = r.reason"
            " FROM unnest($1::uuid[], $2::smallint[], $3::text[]) AS r(transaction_id, status, reason)"
            " WHERE t.transaction_id = r.transaction_id AND t.status = $4 RETURNING t.*",
            [d[0] for d in decisions],
            [int(d[1]) for d in decisions],
            [d[2] for d in decisions],
            int(SubmissionStatus.PENDING),
        )
        return rows

    async def mark_issued(self, issued: Sequence[tuple[uuid.UUID, int, int]]) -> None:
        """(invoice id, chain id, height) of accepted ISSUEs: PENDING invoices become ISSUED (a red
        letter's outcome may have moved them on already), each gets its ledger position."""
        await self.conn.execute(
            "UPDATE invoices i SET status = CASE WHEN i.status = $4 THEN $5 ELSE i.status END,"
            " ledger_chain_id = r.chain_id, ledger_height = r.height"
            " FROM unnest($1::uuid[], $2::int[], $3::bigint[]) AS r(invoice_id, chain_id, height)"
            " WHERE i.invoice_id = r.invoice_id",
            [i[0] for i in issued],
            [i[1] for i in issued],
            [i[2] for i in issued],
            invoice_pb2.INVOICE_STATUS_PENDING,
            invoice_pb2.INVOICE_STATUS_ISSUED,
        )

    async def mark_rejected(self, rejected: Sequence[tuple[uuid.UUID, str]]) -> None:
        """(invoice id, reason) of rejected ISSUEs: REJECTED, nothing reimbursable."""
        await self.conn.execute(
            "UPDATE invoices i SET status = $3, rejection_reason = r.reason, reimbursable_fen = 0"
            " FROM unnest($1::uuid[], $2::text[]) AS r(invoice_id, reason) WHERE i.invoice_id = r.invoice_id",
            [r[0] for r in rejected],
            [r[1] for r in rejected],
            invoice_pb2.INVOICE_STATUS_REJECTED,
        )

    async def red_letter_accepted(
        self, red_letter_id: uuid.UUID, original_id: uuid.UUID, *, chain_id: int, height: int, cancels: bool
    ) -> None:
        """The red letter is ISSUED; its original becomes CANCELLED (nothing reimbursable, whatever other
        red-letter results did before) or PARTIALLY_RED_LETTERED, unless it was cancelled already."""
        await self.conn.execute(
            "UPDATE invoices SET status = $2, ledger_chain_id = $3, ledger_height = $4 WHERE invoice_id = $1",
            red_letter_id,
            invoice_pb2.INVOICE_STATUS_ISSUED,
            chain_id,
            height,
        )
        new_status = (
            invoice_pb2.INVOICE_STATUS_CANCELLED if cancels else invoice_pb2.INVOICE_STATUS_PARTIALLY_RED_LETTERED
        )
        await self.conn.execute(
            "UPDATE invoices SET status = $2,"
            " reimbursable_fen = CASE WHEN $2 = $3 THEN 0 ELSE reimbursable_fen END"
            " WHERE invoice_id = $1 AND status <> $3",
            original_id,
            new_status,
            invoice_pb2.INVOICE_STATUS_CANCELLED,
        )

    async def red_letter_rejected(
        self, red_letter_id: uuid.UUID, original_id: uuid.UUID, *, reason: str, amount_fen: int
    ) -> None:
        """The red letter is REJECTED; its amount goes back to the original, unless the original was
        itself rejected or has been cancelled since (results of one invoice arrive in any order)."""
        await self.conn.execute(
            "UPDATE invoices SET status = $2, rejection_reason = $3 WHERE invoice_id = $1",
            red_letter_id,
            invoice_pb2.INVOICE_STATUS_REJECTED,
            reason,
        )
        await self.conn.execute(
            "UPDATE invoices SET reimbursable_fen = reimbursable_fen + $2"
            " WHERE invoice_id = $1 AND status <> ALL($3::smallint[])",
            original_id,
            amount_fen,
            [invoice_pb2.INVOICE_STATUS_REJECTED, invoice_pb2.INVOICE_STATUS_CANCELLED],
        )

    # --- outbox ------------------------------------------------------------------------------------

    async def enqueue(self, events: Sequence[OutgoingEvent]) -> None:
        """Queue events for Kafka; they are published after (and only if) the transaction commits."""
        await enqueue(self.conn, events)


class UnitOfWork:
    """One connection from the pool per unit of work; `transaction()` commits on a clean exit and
    rolls everything back on an exception."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[MintingStore]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield MintingStore(conn)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[MintingStore]:
        """For reads of one statement, which need no transaction of their own."""
        async with self._pool.acquire() as conn:
            yield MintingStore(conn)
