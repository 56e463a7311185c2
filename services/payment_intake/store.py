"""PostgreSQL adapter for payments, refunds and webhook nonces (schema payment_intake).

Every function takes a connection inside the caller's transaction: the state change and its outbox
event commit together. Exactly-once is decided by UNIQUE constraints (INSERT .. ON CONFLICT DO
NOTHING) and row locks, never by reading first and writing after.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import AlreadyExists, FailedPrecondition, FapiaoError, NotFound
from fapiao_runtime.outbox import OUTBOX_INSERT, enqueue, outbox_arrays, outbox_source
from google.protobuf.timestamp_pb2 import Timestamp

from payment_intake.domain import (
    RecordPayment,
    RecordRefund,
    payment_fingerprint,
    payment_id_for,
    payment_status,
    refund_fingerprint,
)
from payment_intake.events import payment_refunded, payment_succeeded

_PAYMENT_COLUMNS = (
    "payment_id, merchant_id, transaction_id, out_trade_no, amount_fen, payer_total_fen, currency, success_time,"
    " payer_ref, appid, trade_type, items, source, fingerprint, refunded_fen"
)


@dataclass(frozen=True)
class PaymentOutcome:
    payment: payments_pb2.Payment
    duplicate: bool


@dataclass(frozen=True)
class RefundOutcome:
    refund: payments_pb2.Refund
    payment: payments_pb2.Payment
    duplicate: bool


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _items_blob(items: Sequence[payments_pb2.PaymentItem]) -> bytes:
    return payments_pb2.Payment(items=list(items)).SerializeToString(deterministic=True)


def payment_from_row(row: asyncpg.Record) -> payments_pb2.Payment:
    holder = payments_pb2.Payment()
    holder.ParseFromString(row["items"])
    return payments_pb2.Payment(
        payment_id=str(row["payment_id"]),
        merchant_id=row["merchant_id"],
        transaction_id=row["transaction_id"],
        out_trade_no=row["out_trade_no"],
        amount_fen=row["amount_fen"],
        payer_total_fen=row["payer_total_fen"],
        currency=row["currency"],
        success_time=_timestamp(row["success_time"]),
        payer_ref=row["payer_ref"],
        refunded_fen=row["refunded_fen"],
        status=payment_status(row["amount_fen"], row["refunded_fen"]),  # type: ignore[arg-type]
        items=holder.items,
        appid=row["appid"],
        trade_type=row["trade_type"],
        source=row["source"],
    )


def _payment_from_command(cmd: RecordPayment, payment_id: uuid.UUID) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        payment_id=str(payment_id),
        merchant_id=cmd.merchant_id,
        transaction_id=cmd.transaction_id,
        out_trade_no=cmd.out_trade_no,
        amount_fen=cmd.amount_fen,
        payer_total_fen=cmd.payer_total_fen,
        currency=cmd.currency,
        success_time=_timestamp(cmd.success_time),
        payer_ref=cmd.payer_ref,
        refunded_fen=0,
        status=payments_pb2.PAYMENT_STATUS_SUCCEEDED,
        items=list(cmd.items),
        appid=cmd.appid,
        trade_type=cmd.trade_type,
        source=cmd.source,  # type: ignore[arg-type]
    )


async def record_payments(
    conn: asyncpg.Connection,
    commands: Sequence[RecordPayment],
    nonces: Sequence[str | None] | None = None,
) -> list[PaymentOutcome | FapiaoError]:
    """Record validated payments; one outcome per command, in order. With `nonces`, call inside a
    transaction; without, every statement is atomic on its own (each payment commits with its event).

    `nonces` (webhook deliveries, None for gRPC) are claimed first: a nonce already stored fails its
    command REPLAYED_NONCE; the nonce of a command that fails later is removed again, so a rejected
    delivery stores nothing. New payments get their PaymentSucceeded outbox row in this transaction.
    """
    outcomes: list[PaymentOutcome | FapiaoError | None] = [None] * len(commands)
    claimed: list[tuple[int, str, str]] = []
    if nonces is not None and any(nonces):
        outcomes, claimed = await _claim_nonces(conn, commands, nonces)
    live = [i for i, outcome in enumerate(outcomes) if outcome is None]
    recorded = await _insert_payments(conn, [commands[i] for i in live]) if live else []
    for index, outcome in zip(live, recorded, strict=True):
        outcomes[index] = outcome
    failed = [(merchant, nonce) for index, merchant, nonce in claimed if isinstance(outcomes[index], FapiaoError)]
    if failed:
        await conn.execute(
            "DELETE FROM webhook_nonces WHERE (merchant_id, nonce) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [m for m, _ in failed],
            [n for _, n in failed],
        )
    assert all(outcome is not None for outcome in outcomes)
    return outcomes  # type: ignore[return-value]


async def _claim_nonces(
    conn: asyncpg.Connection, commands: Sequence[RecordPayment], nonces: Sequence[str | None]
) -> tuple[list[PaymentOutcome | FapiaoError | None], list[tuple[int, str, str]]]:
    outcomes: list[PaymentOutcome | FapiaoError | None] = [None] * len(commands)
    wanted: dict[tuple[str, str], int] = {}
    for index, (cmd, nonce) in enumerate(zip(commands, nonces, strict=True)):
        if nonce is None:
            continue
        if (cmd.merchant_id, nonce) in wanted:
            outcomes[index] = _replayed()  # the same request twice in one batch
        else:
            wanted[(cmd.merchant_id, nonce)] = index
    keys = sorted(wanted)
    rows = await conn.fetch(
        """INSERT INTO webhook_nonces (merchant_id, nonce) SELECT * FROM unnest($1::text[], $2::text[])
           ON CONFLICT DO NOTHING RETURNING merchant_id, nonce""",
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    fresh = {(r["merchant_id"], r["nonce"]) for r in rows}
    claimed = []
    for key, index in wanted.items():
        if key in fresh:
            claimed.append((index, key[0], key[1]))
        else:
            outcomes[index] = _replayed()
    return outcomes, claimed


def _replayed() -> FapiaoError:
    return AlreadyExists("REPLAYED_NONCE", "this nonce was already used within the replay window")


async def _insert_payments(
    conn: asyncpg.Connection, commands: Sequence[RecordPayment]
) -> list[PaymentOutcome | FapiaoError]:
    """Insert the payments and the outbox rows of those that are new in one statement (atomic on its
    own, so a batch without nonces needs no explicit transaction: one round trip). A (merchant,
    transaction id) already recorded with the same fingerprint is a duplicate; with other content
    TRANSACTION_CONFLICT; a new transaction id for an already-paid out_trade_no OUT_TRADE_NO_CONFLICT.
    Rows go in key order so concurrent batches cannot deadlock."""
    first: dict[tuple[str, str], RecordPayment] = {}
    for cmd in commands:
        first.setdefault(cmd.key, cmd)
    ordered = sorted(first.values(), key=lambda c: c.key)
    fingerprints = {c.key: payment_fingerprint(c) for c in ordered}  # of the first command of each key
    ids = [payment_id_for(c.merchant_id, c.transaction_id) for c in ordered]
    # The event of every candidate is built up front; the statement queues only those inserted.
    candidates = [_payment_from_command(cmd, payment_id) for cmd, payment_id in zip(ordered, ids, strict=True)]
    events = [
        payment_succeeded(payment, payment_id, traceparent=cmd.traceparent)
        for cmd, payment_id, payment in zip(ordered, ids, candidates, strict=True)
    ]
    inserted_rows = await conn.fetch(
        f"""WITH input AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                    $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::bytea[], $13::smallint[],
                    $14::bytea[]) WITH ORDINALITY
                    AS t(payment_id, merchant_id, transaction_id, out_trade_no, amount_fen, payer_total_fen, currency,
                         success_time, payer_ref, appid, trade_type, items, source, fingerprint, n)
            ), inserted AS (
                INSERT INTO payments ({_PAYMENT_COLUMNS})
                SELECT payment_id, merchant_id, transaction_id, out_trade_no, amount_fen, payer_total_fen, currency,
                       success_time, payer_ref, appid, trade_type, items, source, fingerprint, 0
                FROM input ORDER BY n
                ON CONFLICT DO NOTHING
                RETURNING payment_id, merchant_id, transaction_id
            ), queued AS (
                -- the runtime's transactional outbox, in the same statement: events of inserted rows only
                {OUTBOX_INSERT} SELECT ob.event_id, ob.topic, ob.kafka_key, ob.kafka_partition, ob.payload
                FROM {outbox_source(15)} JOIN input i ON i.n = ob.n JOIN inserted USING (payment_id) ORDER BY ob.n
            )
            SELECT merchant_id, transaction_id FROM inserted""",
        ids,
        [c.merchant_id for c in ordered],
        [c.transaction_id for c in ordered],
        [c.out_trade_no for c in ordered],
        [c.amount_fen for c in ordered],
        [c.payer_total_fen for c in ordered],
        [c.currency for c in ordered],
        [c.success_time for c in ordered],
        [c.payer_ref for c in ordered],
        [c.appid for c in ordered],
        [c.trade_type for c in ordered],
        [_items_blob(c.items) for c in ordered],
        [c.source for c in ordered],
        [fingerprints[c.key] for c in ordered],
        *outbox_arrays(events),
    )
    inserted = {(r["merchant_id"], r["transaction_id"]) for r in inserted_rows}
    new_payments = {cmd.key: payment for cmd, payment in zip(ordered, candidates, strict=True) if cmd.key in inserted}
    existing: dict[tuple[str, str], asyncpg.Record] = {}
    others = [key for key in first if key not in inserted]
    if others:
        # The conflicting rows are committed (ON CONFLICT waited for them), so this read sees them.
        rows = await conn.fetch(
            f"""SELECT {_PAYMENT_COLUMNS} FROM payments
                WHERE (merchant_id, transaction_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
            [k[0] for k in others],
            [k[1] for k in others],
        )
        existing = {(r["merchant_id"], r["transaction_id"]): r for r in rows}
    outcomes: list[PaymentOutcome | FapiaoError] = []
    for cmd in commands:
        fingerprint = payment_fingerprint(cmd) if first[cmd.key] is not cmd else fingerprints[cmd.key]
        if cmd.key in new_payments:
            is_first = first[cmd.key] is cmd
            if not is_first and fingerprints[cmd.key] != fingerprint:
                outcomes.append(_transaction_conflict())
            else:
                outcomes.append(PaymentOutcome(new_payments[cmd.key], duplicate=not is_first))
            continue
        row = existing.get(cmd.key)
        if row is None:
            outcomes.append(AlreadyExists("OUT_TRADE_NO_CONFLICT", "out_trade_no already paid by another transaction"))
        elif bytes(row["fingerprint"]) != fingerprint:
            outcomes.append(_transaction_conflict())
        else:
            outcomes.append(PaymentOutcome(payment_from_row(row), duplicate=True))
    return outcomes


def _transaction_conflict() -> AlreadyExists:
    return AlreadyExists("TRANSACTION_CONFLICT", "transaction_id already recorded with different content")


async def get_payment(conn: asyncpg.Connection, merchant_id: str, transaction_id: str) -> payments_pb2.Payment:
    """The recorded payment; NotFound PAYMENT_NOT_FOUND if none."""
    row = await conn.fetchrow(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE merchant_id = $1 AND transaction_id = $2",
        merchant_id,
        transaction_id,
    )
    if row is None:
        raise NotFound("PAYMENT_NOT_FOUND", "no payment with this merchant_id and transaction_id")
    return payment_from_row(row)


def _refund_message(row: asyncpg.Record) -> payments_pb2.Refund:
    return payments_pb2.Refund(
        refund_id=row["refund_id"],
        payment_id=str(row["payment_id"]),
        merchant_id=row["merchant_id"],
        transaction_id=row["transaction_id"],
        refund_fen=row["refund_fen"],
        refund_time=_timestamp(row["refund_time"]),
        reason=row["reason"],
    )


async def record_refund(conn: asyncpg.Connection, cmd: RecordRefund) -> RefundOutcome:
    """Record a validated refund exactly once and enqueue PaymentRefunded.

    The payment row is locked (SELECT .. FOR UPDATE) so concurrent refunds of one payment serialize
    and their sum can never exceed amount_fen. Errors: PAYMENT_NOT_FOUND, REFUND_CONFLICT (same
    refund id, different content), REFUND_EXCEEDS_PAYMENT.
    """
    payment_row = await conn.fetchrow(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE merchant_id = $1 AND transaction_id = $2 FOR UPDATE",
        cmd.merchant_id,
        cmd.transaction_id,
    )
    if payment_row is None:
        raise NotFound("PAYMENT_NOT_FOUND", "no payment with this merchant_id and transaction_id")
    fingerprint = refund_fingerprint(cmd)
    previous = await conn.fetchrow(
        "SELECT * FROM refunds WHERE merchant_id = $1 AND refund_id = $2", cmd.merchant_id, cmd.refund_id
    )
    if previous is not None:
        if bytes(previous["fingerprint"]) != fingerprint:
            raise AlreadyExists("REFUND_CONFLICT", "refund_id already recorded with different content")
        return RefundOutcome(_refund_message(previous), payment_from_row(payment_row), duplicate=True)
    amount, refunded = payment_row["amount_fen"], payment_row["refunded_fen"]
    if refunded + cmd.refund_fen > amount:
        raise FailedPrecondition(
            "REFUND_EXCEEDS_PAYMENT", f"refunds would total {refunded + cmd.refund_fen} fen of {amount} fen paid"
        )
    refund_row = await conn.fetchrow(
        """INSERT INTO refunds (merchant_id, refund_id, payment_id, transaction_id, refund_fen, refund_time,
               reason, fingerprint)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING *""",
        cmd.merchant_id,
        cmd.refund_id,
        payment_row["payment_id"],
        cmd.transaction_id,
        cmd.refund_fen,
        cmd.refund_time,
        cmd.reason,
        fingerprint,
    )
    if refund_row is None:  # recorded meanwhile for another payment of this merchant
        raise AlreadyExists("REFUND_CONFLICT", "refund_id already recorded for another payment")
    updated = await conn.fetchrow(
        f"UPDATE payments SET refunded_fen = refunded_fen + $1 WHERE payment_id = $2 RETURNING {_PAYMENT_COLUMNS}",
        cmd.refund_fen,
        payment_row["payment_id"],
    )
    refund, payment = _refund_message(refund_row), payment_from_row(updated)
    await enqueue(conn, [payment_refunded(refund, payment, cmd.merchant_id)])
    return RefundOutcome(refund, payment, duplicate=False)


async def claim_nonce(conn: asyncpg.Connection, merchant_id: str, nonce: str) -> bool:
    """Insert the webhook nonce; False if it was already seen (the caller must reject the request)."""
    claimed = await conn.fetchval(
        "INSERT INTO webhook_nonces (merchant_id, nonce) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        merchant_id,
        nonce,
    )
    return bool(claimed)


async def purge_nonces(conn: asyncpg.Connection, retention_s: int) -> int:
    """Delete nonces older than `retention_s` (beyond the timestamp window they cannot be replayed)."""
    status = await conn.execute(
        "DELETE FROM webhook_nonces WHERE seen_at < now() - make_interval(secs => $1)", float(retention_s)
    )
    return int(status.split()[-1])
