"""The reimbursement store, in PostgreSQL: requests and the ledger transactions they submitted
(idempotency), and the issuer keys learnt from the ledger log.

A request row (UNIQUE organisation + idempotency key) and its transaction ids are inserted in the
same database transaction that enqueues the signed transactions for the ledger, so a retry always
finds the ids it must wait for and never submits a second, different transaction (tigerbeetle's
"reliable transaction submission").
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import OutgoingEvent
from fapiao_runtime.issuer_keys import IssuerKey
from fapiao_runtime.outbox import OUTBOX_INSERT, outbox_arrays, outbox_source

from reimbursement.organisations import Organisation


class Operation(enum.StrEnum):
    """What a request asks for (reimbursement_requests.operation)."""

    LOCK = "LOCK"
    UNLOCK = "UNLOCK"
    CLOSE = "CLOSE"
    BATCH_LOCK = "BATCH_LOCK"
    BATCH_CLOSE = "BATCH_CLOSE"


class Action(enum.StrEnum):
    """The ledger transaction a row submits (reimbursement_transactions.action)."""

    LOCK = "LOCK"
    UNLOCK = "UNLOCK"
    CLOSE = "CLOSE"


class Purpose(enum.StrEnum):
    """Why a row was submitted: the caller asked for it, or it undoes a LOCK a failed batch won."""

    REQUESTED = "REQUESTED"
    COMPENSATION = "COMPENSATION"


class TxState(enum.StrEnum):
    """Where a submitted transaction stands; the ledger's result decides it, once."""

    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class StoredRequest:
    request_id: int
    operation: Operation
    request_digest: bytes


@dataclass
class TxRow:
    """One submitted ledger transaction and, once known, its committed outcome."""

    transaction_id: str
    position: int
    purpose: Purpose
    action: Action
    invoice_number: str
    invoice_id: str
    state: TxState = TxState.PENDING
    rejection_reason: str = ""
    ledger_status: ledger_pb2.InvoiceLedgerStatus.ValueType = ledger_pb2.INVOICE_LEDGER_STATUS_UNSPECIFIED
    reimbursable_fen: int = 0
    chain_id: int = 0
    height: int = 0
    decided_at: datetime | None = None
    idempotency_key: str = ""

    @property
    def pending(self) -> bool:
        return self.state is TxState.PENDING


def request_digest(operation: Operation, invoice_numbers: Sequence[str]) -> bytes:
    """What a request asks for; the same key with another digest is an idempotency conflict."""
    return hashlib.sha256(f"{operation}\n{','.join(invoice_numbers)}".encode()).digest()


_TX_COLUMNS = (
    "t.transaction_id, t.position, t.purpose, t.action, t.invoice_number, t.invoice_id, t.state, t.rejection_reason,"
    " t.ledger_status, t.reimbursable_fen, t.chain_id, t.height, t.decided_at, r.idempotency_key"
)


def _row(record: asyncpg.Record) -> TxRow:
    return TxRow(
        transaction_id=str(record["transaction_id"]),
        position=record["position"],
        purpose=Purpose(record["purpose"]),
        action=Action(record["action"]),
        invoice_number=record["invoice_number"],
        invoice_id=record["invoice_id"],
        state=TxState(record["state"]),
        rejection_reason=record["rejection_reason"],
        ledger_status=record["ledger_status"],
        reimbursable_fen=record["reimbursable_fen"],
        chain_id=record["chain_id"],
        height=record["height"],
        decided_at=record["decided_at"],
        idempotency_key=record["idempotency_key"],
    )


async def find_caller_and_request(
    conn: asyncpg.Connection | asyncpg.Pool, tax_id: str, key: str
) -> tuple[Organisation | None, StoredRequest | None]:
    """The organisation and its request under `key`, in one round trip (the hot path of every mutation)."""
    row = await conn.fetchrow(
        "SELECT o.tax_id, o.name, o.status, r.id, r.operation, r.request_digest FROM organisations o"
        " LEFT JOIN reimbursement_requests r ON r.organisation_tax_id = o.tax_id AND r.idempotency_key = $2"
        " WHERE o.tax_id = $1",
        tax_id,
        key,
    )
    if row is None:
        return None, None
    organisation = Organisation(row["tax_id"], row["name"], row["status"] == "ACTIVE")
    if row["id"] is None:
        return organisation, None
    return organisation, StoredRequest(row["id"], Operation(row["operation"]), bytes(row["request_digest"]))


async def find_request(conn: asyncpg.Connection | asyncpg.Pool, tax_id: str, key: str) -> StoredRequest | None:
    row = await conn.fetchrow(
        "SELECT id, operation, request_digest FROM reimbursement_requests"
        " WHERE organisation_tax_id = $1 AND idempotency_key = $2",
        tax_id,
        key,
    )
    return None if row is None else StoredRequest(row["id"], Operation(row["operation"]), bytes(row["request_digest"]))


async def insert_request_with_transactions(
    conn: asyncpg.Connection | asyncpg.Pool,
    tax_id: str,
    key: str,
    operation: Operation,
    digest: bytes,
    rows: Sequence[TxRow],
    events: Sequence[OutgoingEvent] = (),
) -> int | None:
    """Insert the request, its REQUESTED transactions and their ledger `events` (outbox) in one statement:
    one round trip, atomic without an explicit transaction.

    None if the key is already taken (then nothing is inserted, events included).
    """
    value = await conn.fetchval(
        "WITH req AS (INSERT INTO reimbursement_requests"
        " (organisation_tax_id, idempotency_key, operation, request_digest) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (organisation_tax_id, idempotency_key) DO NOTHING RETURNING id),"
        " txs AS (INSERT INTO reimbursement_transactions (transaction_id, request_id, position, purpose, action,"
        " organisation_tax_id, invoice_number, invoice_id)"
        " SELECT t.transaction_id, req.id, t.position, 'REQUESTED', t.action, $1, t.invoice_number, t.invoice_id"
        " FROM req, unnest($5::uuid[], $6::int[], $7::text[], $8::text[], $9::text[])"
        " AS t (transaction_id, position, action, invoice_number, invoice_id)),"
        f" queued AS ({OUTBOX_INSERT} SELECT ob.event_id, ob.topic, ob.kafka_key, ob.kafka_partition, ob.payload"
        f" FROM req, {outbox_source(10)} ORDER BY ob.n)"
        " SELECT id FROM req",
        tax_id,
        key,
        operation,
        digest,
        [uuid.UUID(r.transaction_id) for r in rows],
        [r.position for r in rows],
        [r.action for r in rows],
        [r.invoice_number for r in rows],
        [r.invoice_id for r in rows],
        *outbox_arrays(events),
    )
    return None if value is None else int(value)


async def insert_transactions(
    conn: asyncpg.Connection, request_id: int, tax_id: str, rows: Sequence[TxRow]
) -> list[TxRow]:
    """Insert transaction rows; return those actually inserted (existing (request, position, purpose) skip)."""
    inserted: list[TxRow] = []
    for row in rows:
        done = await conn.fetchval(
            "INSERT INTO reimbursement_transactions (transaction_id, request_id, position, purpose, action,"
            " organisation_tax_id, invoice_number, invoice_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (request_id, position, purpose) DO NOTHING RETURNING true",
            uuid.UUID(row.transaction_id),
            request_id,
            row.position,
            row.purpose,
            row.action,
            tax_id,
            row.invoice_number,
            row.invoice_id,
        )
        if done:
            inserted.append(row)
    return inserted


async def request_transactions(conn: asyncpg.Connection | asyncpg.Pool, request_id: int) -> list[TxRow]:
    records = await conn.fetch(
        f"SELECT {_TX_COLUMNS} FROM reimbursement_transactions t JOIN reimbursement_requests r ON r.id = t.request_id"
        " WHERE t.request_id = $1 ORDER BY t.purpose DESC, t.position",
        request_id,
    )
    return [_row(r) for r in records]


async def record_outcomes(
    conn: asyncpg.Connection | asyncpg.Pool,
    results: Sequence[ledger_pb2.TransactionResult],
    decided_at: datetime | None = None,
) -> None:
    """Store committed outcomes of pending transactions (a decided row is never changed)."""
    if not results:
        return
    decided_at = decided_at or datetime.now(UTC)
    await conn.executemany(
        "UPDATE reimbursement_transactions SET state = $2, rejection_reason = $3, ledger_status = $4,"
        " reimbursable_fen = $5, chain_id = $6, height = $7, decided_at = $8"
        " WHERE transaction_id = $1 AND state = 'PENDING'",
        [
            (
                uuid.UUID(r.transaction_id),
                TxState.ACCEPTED if r.accepted else TxState.REJECTED,
                r.rejection_reason,
                int(r.state.status),
                r.state.reimbursable_fen,
                r.chain_id,
                r.height,
                decided_at,
            )
            for r in results
        ],
    )


def apply_result(row: TxRow, result: ledger_pb2.TransactionResult, decided_at: datetime) -> None:
    """Update the in-memory row with a committed result (mirrors record_outcomes)."""
    if not row.pending:
        return
    row.state = TxState.ACCEPTED if result.accepted else TxState.REJECTED
    row.rejection_reason = result.rejection_reason
    row.ledger_status = result.state.status
    row.reimbursable_fen = result.state.reimbursable_fen
    row.chain_id = result.chain_id
    row.height = result.height
    row.decided_at = decided_at


async def list_transactions(
    conn: asyncpg.Connection | asyncpg.Pool, tax_id: str, after: tuple[int, int] | None, limit: int
) -> list[tuple[int, TxRow]]:
    """The organisation's requested transactions in submission order, after the (request id, position) cursor."""
    after_request, after_position = after or (0, -1)
    records = await conn.fetch(
        f"SELECT t.request_id, {_TX_COLUMNS} FROM reimbursement_transactions t"
        " JOIN reimbursement_requests r ON r.id = t.request_id"
        " WHERE t.organisation_tax_id = $1 AND t.purpose = 'REQUESTED' AND (t.request_id, t.position) > ($2, $3)"
        " ORDER BY t.request_id, t.position LIMIT $4",
        tax_id,
        after_request,
        after_position,
        limit,
    )
    return [(r["request_id"], _row(r)) for r in records]


async def failed_batch_locks_to_undo(
    conn: asyncpg.Connection | asyncpg.Pool, transaction_ids: Sequence[str] | None
) -> list[tuple[int, str]]:
    """(request id, organisation) of BATCH_LOCKs that failed (all decided, one rejected) and still hold a
    LOCK they won without its compensating UNLOCK; only the requests of `transaction_ids` if given."""
    records = await conn.fetch(
        "SELECT r.id, r.organisation_tax_id FROM reimbursement_requests r WHERE r.operation = 'BATCH_LOCK'"
        " AND ($1::uuid[] IS NULL OR r.id IN"
        " (SELECT request_id FROM reimbursement_transactions WHERE transaction_id = ANY($1::uuid[])))"
        " AND EXISTS (SELECT 1 FROM reimbursement_transactions t WHERE t.request_id = r.id"
        " AND t.purpose = 'REQUESTED' AND t.state = 'REJECTED')"
        " AND NOT EXISTS (SELECT 1 FROM reimbursement_transactions t WHERE t.request_id = r.id"
        " AND t.purpose = 'REQUESTED' AND t.state = 'PENDING')"
        " AND EXISTS (SELECT 1 FROM reimbursement_transactions t WHERE t.request_id = r.id"
        " AND t.purpose = 'REQUESTED' AND t.state = 'ACCEPTED' AND t.action = 'LOCK' AND NOT EXISTS"
        " (SELECT 1 FROM reimbursement_transactions c WHERE c.request_id = r.id AND c.position = t.position"
        " AND c.purpose = 'COMPENSATION'))",
        None if transaction_ids is None else [uuid.UUID(t) for t in transaction_ids],
    )
    return [(r["id"], r["organisation_tax_id"]) for r in records]


async def latest_holder_actions(
    conn: asyncpg.Connection | asyncpg.Pool, tax_id: str, invoice_numbers: Sequence[str], except_key: str
) -> dict[str, tuple[Action, TxState]]:
    """invoice number -> (action, state) of `tax_id`'s latest transaction on it not rejected, leaving out
    the request with idempotency key `except_key`."""
    records = await conn.fetch(
        "SELECT DISTINCT ON (t.invoice_number) t.invoice_number, t.action, t.state FROM reimbursement_transactions t"
        " JOIN reimbursement_requests r ON r.id = t.request_id"
        " WHERE t.organisation_tax_id = $1 AND t.invoice_number = ANY($2::text[]) AND t.state <> 'REJECTED'"
        " AND r.idempotency_key <> $3"
        " ORDER BY t.invoice_number, t.submitted_at DESC, t.transaction_id",
        tax_id,
        list(invoice_numbers),
        except_key,
    )
    return {r["invoice_number"]: (Action(r["action"]), TxState(r["state"])) for r in records}


async def stale_pending(conn: asyncpg.Connection | asyncpg.Pool, older_than_s: float, limit: int) -> dict[str, str]:
    """Transaction id -> invoice id of up to `limit` transactions PENDING for more than `older_than_s`."""
    records = await conn.fetch(
        "SELECT transaction_id, invoice_id FROM reimbursement_transactions WHERE state = 'PENDING'"
        " AND submitted_at < now() - make_interval(secs => $1) ORDER BY submitted_at LIMIT $2",
        older_than_s,
        limit,
    )
    return {str(r["transaction_id"]): r["invoice_id"] for r in records}


async def locked_invoice_ids(
    conn: asyncpg.Connection | asyncpg.Pool, tax_id: str, invoice_numbers: Sequence[str]
) -> dict[str, str]:
    """invoice number -> invoice id for the invoices `tax_id` ever LOCKed (accepted or still pending).

    Only these can be held by the organisation; whether it holds the lock NOW is the ledger's call.
    """
    records = await conn.fetch(
        "SELECT DISTINCT invoice_number, invoice_id FROM reimbursement_transactions"
        " WHERE organisation_tax_id = $1 AND invoice_number = ANY($2::text[]) AND action = 'LOCK'"
        " AND state <> 'REJECTED'",
        tax_id,
        list(invoice_numbers),
    )
    return {r["invoice_number"]: r["invoice_id"] for r in records}


async def store_registration(conn: asyncpg.Connection | asyncpg.Pool, registration: ledger_pb2.KeyRegistration) -> None:
    """Upsert an ISSUER key (others are ignored). Revocation sticks: a revoked key id is never re-enabled."""
    if registration.role != ledger_pb2.SUBMITTER_ROLE_ISSUER:
        return
    if registration.revoked:
        await conn.execute(
            "UPDATE issuer_keys SET revoked = true, updated_at = now() WHERE key_id = $1", registration.key_id
        )
        return
    if len(registration.public_key) != 32:
        return
    await conn.execute(
        "INSERT INTO issuer_keys (key_id, public_key, seller_tax_id, registration_id) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (key_id) DO NOTHING",
        registration.key_id,
        registration.public_key,
        registration.subject,
        registration.registration_id,
    )


async def find_issuer_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> IssuerKey | None:
    """The issuer key `key_id` as the authority registered it on the ledger, or None if not (yet) stored."""
    row = await conn.fetchrow(
        "SELECT key_id, public_key, seller_tax_id, revoked FROM issuer_keys WHERE key_id = $1", key_id
    )
    if row is None:
        return None
    return IssuerKey(row["key_id"], bytes(row["public_key"]), row["seller_tax_id"], row["revoked"])
