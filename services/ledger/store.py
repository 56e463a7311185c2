"""PostgreSQL adapter of one validator (its own schema). Writes a whole block in one transaction."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.ledger.v1 import ledger_pb2

from ledger.chain import GENESIS_HASH, CutBlock, claims_id
from ledger.presence import PresenceFilter
from ledger.state_machine import DUPLICATE_TRANSACTION, SubmitterKey


class HeaderConflict(RuntimeError):
    """This validator already stored (and signed) a different header for the same height."""


@dataclass(frozen=True)
class ChainTip:
    next_height: int
    previous_hash: bytes
    next_offset: int


async def chain_tip(conn: asyncpg.Connection, chain_id: int) -> ChainTip:
    row = await conn.fetchrow(
        "SELECT height, header_hash, next_offset FROM blocks WHERE chain_id = $1 ORDER BY height DESC LIMIT 1",
        chain_id,
    )
    if row is None:
        return ChainTip(1, GENESIS_HASH, 0)
    return ChainTip(row["height"] + 1, bytes(row["header_hash"]), row["next_offset"])


async def load_registry(conn: asyncpg.Connection, chain_id: int) -> tuple[dict[str, SubmitterKey], set[str]]:
    keys = {}
    for r in await conn.fetch("SELECT * FROM submitter_keys WHERE chain_id = $1", chain_id):
        raw = bytes(r["public_key"])
        keys[r["key_id"]] = SubmitterKey(
            r["key_id"],
            raw,
            Ed25519PublicKey.from_public_bytes(raw),
            r["role"],
            r["subject"],
            r["revoked"],
            r["registration_id"],
        )
    ids = {
        r["registration_id"]
        for r in await conn.fetch("SELECT registration_id FROM key_registrations WHERE chain_id = $1", chain_id)
    }
    return keys, ids


class RecentBlock(NamedTuple):
    chain_id: int
    height: int
    header_hash: bytes
    final: bool
    results_published: bool


async def recent_blocks(
    conn: asyncpg.Connection, floors: Mapping[int, int], publishes: Mapping[int, bool]
) -> list[RecentBlock]:
    """Per chain of `floors` (chain -> lowest recent height): the blocks from that height on, and any
    older one not final yet or, on a chain this validator publishes the results of (`publishes`), whose
    results are not marked published."""
    chains = list(floors)
    rows = await conn.fetch(
        "SELECT b.chain_id, b.height, b.header_hash, b.final, b.results_published FROM blocks b"
        " JOIN unnest($1::int[], $2::bigint[], $3::boolean[]) AS f(chain_id, floor, publishes)"
        " ON f.chain_id = b.chain_id"
        " WHERE b.height >= f.floor OR NOT b.final OR (f.publishes AND NOT b.results_published)",
        chains,
        [floors[c] for c in chains],
        [publishes[c] for c in chains],
    )
    return [
        RecentBlock(r["chain_id"], r["height"], bytes(r["header_hash"]), r["final"], r["results_published"])
        for r in rows
    ]


class OwnSignature(NamedTuple):
    chain_id: int
    height: int
    header: bytes
    signature: bytes


async def unfinal_own_signatures(conn: asyncpg.Connection, validator_id: str) -> list[OwnSignature]:
    """Our stored signatures of blocks not final yet, with the headers they sign."""
    rows = await conn.fetch(
        "SELECT b.chain_id, b.height, b.header, s.signature FROM blocks b JOIN block_signatures s"
        " ON s.chain_id = b.chain_id AND s.height = b.height AND s.validator_id = $1 WHERE NOT b.final",
        validator_id,
    )
    return [OwnSignature(r["chain_id"], r["height"], bytes(r["header"]), bytes(r["signature"])) for r in rows]


async def load_presence(conn: asyncpg.Connection) -> tuple[PresenceFilter, PresenceFilter]:
    """Filters of the stored invoice ids and of the claimed transaction ids (see ledger.presence)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        invoices = PresenceFilter.for_stored(await conn.fetchval("SELECT count(*) FROM invoice_states"))
        claimed = PresenceFilter.for_stored(await conn.fetchval("SELECT count(*) FROM transactions WHERE claims_id"))
        async for r in conn.cursor("SELECT invoice_id FROM invoice_states", prefetch=10_000):
            invoices.add(r["invoice_id"])
        async for r in conn.cursor("SELECT transaction_id FROM transactions WHERE claims_id", prefetch=10_000):
            claimed.add(r["transaction_id"])
    return invoices, claimed


async def pin_chain_count(conn: asyncpg.Connection, chains: int) -> None:
    """Record the number of chains on first start; raise RuntimeError if it has changed since."""
    stored = await conn.fetchval(
        "WITH i AS (INSERT INTO ledger_settings (name, value) VALUES ('chains', $1) ON CONFLICT DO NOTHING)"
        " SELECT value FROM ledger_settings WHERE name = 'chains'",
        str(chains),
    )
    if stored is not None and int(stored) != chains:
        raise RuntimeError(
            f"the transaction topic has {chains} partitions but this ledger was built with {stored}:"
            " the partition count of ledger.tx.v1 must never change (each invoice belongs to one chain)"
        )


async def fetch_preload(
    conn: asyncpg.Connection, chain_id: int, invoice_ids: list[str], transaction_ids: list[str]
) -> tuple[dict[str, bytes | None], set[str]]:
    """In one round trip: the stored states of `invoice_ids` on chain `chain_id` (serialized
    InvoiceState, as the chain caches them; None when unknown)
    and which of `transaction_ids` that chain already claimed. Nothing is read from other chains:
    chains progress independently, so their state at this moment differs between validators."""
    states: dict[str, bytes | None] = dict.fromkeys(invoice_ids)
    claimed: set[str] = set()
    if not invoice_ids and not transaction_ids:
        return states, claimed
    rows = await conn.fetch(
        "SELECT true AS is_state, invoice_id AS id, state FROM invoice_states"
        " WHERE invoice_id = ANY($1::text[]) AND chain_id = $3"
        " UNION ALL"
        " SELECT false, transaction_id, NULL::bytea FROM (SELECT DISTINCT transaction_id FROM transactions"
        " WHERE transaction_id = ANY($2::text[]) AND claims_id AND chain_id = $3) AS c",
        invoice_ids,
        transaction_ids,
        chain_id,
    )
    for r in rows:
        if r["is_state"]:
            states[r["id"]] = bytes(r["state"])
        else:
            claimed.add(r["id"])
    return states, claimed


async def commit_blocks(
    pool: asyncpg.Pool, blocks: list[tuple[CutBlock, ledger_pb2.BlockSignature]], validator_id: str
) -> None:
    """Store blocks (in chain order), all of them or none.

    Each block brings its transactions, results, new states, registrations, own signature and the
    chain position, so a crash never leaves half a block. Blocks without key registrations, none of
    them stored yet (the usual case: the blocks of one fetch, often one per chain as their time cuts
    coincide), are one statement, atomic by itself (one round trip); otherwise one transaction holds
    them all, block by block. Raises HeaderConflict if a different header is already stored for a
    height (a validator never signs two headers for one height).
    """
    async with pool.acquire() as conn:
        if not any(block.registrations for block, _ in blocks) and await _insert_blocks(conn, blocks, validator_id):
            return
        async with conn.transaction():
            for block, signature in blocks:
                if await _insert_blocks(conn, [(block, signature)], validator_id):
                    await _insert_registrations(conn, block)
                    continue
                stored = await conn.fetchval(
                    "SELECT header_hash FROM blocks WHERE chain_id = $1 AND height = $2", block.chain_id, block.height
                )
                if bytes(stored) != block.header_hash:
                    raise HeaderConflict(f"chain {block.chain_id} height {block.height} already has another header")


async def _insert_blocks(
    conn: asyncpg.Connection, blocks: list[tuple[CutBlock, ledger_pb2.BlockSignature]], validator_id: str
) -> bool:
    """The blocks, our signatures, their transactions and the states they changed, in one statement,
    if none of the blocks is stored yet; False (nothing written) if one is."""
    transactions: list[tuple[object, ...]] = []
    issue_ids: dict[str, str] = {}
    # The latest state of each invoice the blocks changed (an invoice may change in two blocks of a chain).
    states: dict[str, tuple[int, str, str, bytes, int]] = {}
    for block, _ in blocks:
        for idx, (o, offset, tx_bytes, result_bytes) in enumerate(
            zip(block.outcomes, block.offsets, block.transactions, block.results, strict=True)
        ):
            transactions.append(
                (
                    block.chain_id,
                    block.height,
                    idx,
                    o.transaction_id,
                    o.invoice_id,
                    offset,
                    o.result.accepted,
                    claims_id(o),
                    o.result.rejection_reason == DUPLICATE_TRANSACTION,
                    tx_bytes,
                    result_bytes,
                )
            )
            if o.result.accepted and o.result.type == ledger_pb2.TRANSACTION_TYPE_ISSUE:
                issue_ids[o.invoice_id] = o.transaction_id
        for invoice_id, state in block.states.items():
            states[invoice_id] = (
                block.chain_id,
                state.invoice_number,
                state.last_transaction_id,
                block.state_bytes[invoice_id],
                block.height,
            )
    state_chains, state_numbers, state_last_ids, state_bytes, state_heights = (
        [list(column) for column in zip(*states.values(), strict=True)] if states else [[]] * 5
    )
    fresh = await conn.fetchval(
        "WITH ok AS (SELECT NOT EXISTS (SELECT 1 FROM blocks x"
        " JOIN unnest($1::int[], $2::bigint[]) AS u(chain_id, height) USING (chain_id, height)) AS fresh),"
        " b AS (INSERT INTO blocks (chain_id, height, header, header_hash, transaction_count, next_offset)"
        " SELECT * FROM unnest($1::int[], $2::bigint[], $3::bytea[], $4::bytea[], $5::int[], $6::bigint[])"
        " WHERE (SELECT fresh FROM ok)),"
        " s AS (INSERT INTO block_signatures (chain_id, height, validator_id, header_hash, signature)"
        " SELECT u.chain_id, u.height, $7, u.header_hash, u.signature"
        " FROM unnest($1::int[], $2::bigint[], $4::bytea[], $8::bytea[]) AS u(chain_id, height, header_hash, signature)"
        " WHERE (SELECT fresh FROM ok) ON CONFLICT DO NOTHING),"  # ours, stored ahead while replaying
        " t AS (INSERT INTO transactions (chain_id, height, idx, transaction_id, invoice_id, kafka_offset, accepted,"
        " claims_id, duplicate, tx_bytes, result_bytes)"
        " SELECT * FROM unnest($9::int[], $10::bigint[], $11::int[], $12::text[], $13::text[], $14::bigint[],"
        " $15::boolean[], $16::boolean[], $17::boolean[], $18::bytea[], $19::bytea[]) WHERE (SELECT fresh FROM ok)),"
        " st AS (INSERT INTO invoice_states (invoice_id, chain_id, invoice_number, issue_transaction_id,"
        " last_transaction_id, state, height)"
        " SELECT * FROM unnest($20::text[], $21::int[], $22::text[], $23::text[], $24::text[], $25::bytea[],"
        " $26::bigint[]) WHERE (SELECT fresh FROM ok)"
        " ON CONFLICT (invoice_id) DO UPDATE SET last_transaction_id = EXCLUDED.last_transaction_id,"
        " state = EXCLUDED.state, height = EXCLUDED.height)"
        " SELECT fresh FROM ok",
        [block.chain_id for block, _ in blocks],
        [block.height for block, _ in blocks],
        [block.header_bytes for block, _ in blocks],
        [block.header_hash for block, _ in blocks],
        [len(block.transactions) for block, _ in blocks],
        [block.next_offset for block, _ in blocks],
        validator_id,
        [signature.signature.signature for _, signature in blocks],
        *(list(column) for column in zip(*transactions, strict=True)) if transactions else [[]] * 11,
        list(states),
        state_chains,
        state_numbers,
        [issue_ids.get(invoice_id, "") for invoice_id in states],
        state_last_ids,
        state_bytes,
        state_heights,
    )
    return bool(fresh)


async def _insert_registrations(conn: asyncpg.Connection, block: CutBlock) -> None:
    if not block.registrations:
        return
    await conn.executemany(
        "INSERT INTO submitter_keys (chain_id, key_id, public_key, role, subject, revoked, registration_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (chain_id, key_id) DO UPDATE SET"
        " revoked = EXCLUDED.revoked, registration_id = EXCLUDED.registration_id",
        [
            (
                block.chain_id,
                r.key.key_id,
                r.key.public_raw,
                r.key.role,
                r.key.subject,
                r.key.revoked,
                r.registration_id,
            )
            for r in block.registrations
        ],
    )
    await conn.executemany(
        "INSERT INTO key_registrations (chain_id, registration_id, kafka_offset, height, signed_bytes)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(block.chain_id, r.registration_id, r.offset, block.height, r.signed_bytes) for r in block.registrations],
    )


async def store_signatures(
    conn: asyncpg.Connection,
    signatures: list[ledger_pb2.BlockSignature],
    newly_final: Sequence[tuple[int, int]] = (),
    replay_from: Mapping[int, int] | None = None,
) -> list[tuple[int, int, str]]:
    """Store signatures and mark `newly_final` blocks final, in one statement (one round trip), with
    the signature topic's replay point as it is once they are stored (`replay_from`, docs/ledger.md).

    A signature whose validator already has a different one stored for that height (one signature per
    validator and height is kept) is an equivocation: it goes to `equivocations` with its header, and
    its (chain, height, validator) is returned.
    """
    if not signatures and not newly_final:
        return []
    replay_from = replay_from or {}
    rows = await conn.fetch(
        "WITH i AS (SELECT * FROM unnest($1::int[], $2::bigint[], $3::text[], $4::bytea[], $5::bytea[], $6::bytea[])"
        " AS u(chain_id, height, validator_id, header, header_hash, signature)),"
        " s AS (INSERT INTO block_signatures (chain_id, height, validator_id, header_hash, signature)"
        " SELECT chain_id, height, validator_id, header_hash, signature FROM i ON CONFLICT DO NOTHING),"
        " e AS (INSERT INTO equivocations (chain_id, height, validator_id, header, header_hash, signature)"
        " SELECT i.chain_id, i.height, i.validator_id, i.header, i.header_hash, i.signature FROM i"
        " JOIN block_signatures b USING (chain_id, height, validator_id)"
        " WHERE b.header_hash <> i.header_hash ON CONFLICT DO NOTHING RETURNING chain_id, height, validator_id),"
        " f AS (UPDATE blocks SET final = true FROM unnest($7::int[], $8::bigint[]) AS f(c, h)"
        " WHERE chain_id = f.c AND height = f.h),"
        " r AS (INSERT INTO signature_replay (topic_partition, next_offset)"
        " SELECT * FROM unnest($9::int[], $10::bigint[])"
        " ON CONFLICT (topic_partition) DO UPDATE SET next_offset = EXCLUDED.next_offset)"
        " SELECT chain_id, height, validator_id FROM e",
        *_signature_columns(signatures),
        [c for c, _ in newly_final],
        [h for _, h in newly_final],
        list(replay_from),
        list(replay_from.values()),
    )
    return [(r["chain_id"], r["height"], r["validator_id"]) for r in rows]


async def stored_votes(
    conn: asyncpg.Connection, keys: Collection[tuple[int, int]]
) -> dict[tuple[int, int], dict[str, bytes]]:
    """The stored signatures' header hashes of each (chain, height) in `keys`, by validator."""
    rows = await conn.fetch(
        "SELECT s.chain_id, s.height, s.validator_id, s.header_hash FROM block_signatures s"
        " JOIN unnest($1::int[], $2::bigint[]) AS k(chain_id, height) USING (chain_id, height)",
        [c for c, _ in keys],
        [h for _, h in keys],
    )
    votes: dict[tuple[int, int], dict[str, bytes]] = {}
    for r in rows:
        votes.setdefault((r["chain_id"], r["height"]), {})[r["validator_id"]] = bytes(r["header_hash"])
    return votes


async def highest_signed_height(conn: asyncpg.Connection, chain_id: int) -> int:
    """The highest height of `chain_id` any stored signature names (0 if none): one primary-key probe."""
    return int(
        await conn.fetchval("SELECT coalesce(max(height), 0) FROM block_signatures WHERE chain_id = $1", chain_id)
    )


async def signature_replay_points(conn: asyncpg.Connection) -> dict[int, int]:
    """Per partition of the signature topic, the offset a restart reads it again from."""
    rows = await conn.fetch("SELECT topic_partition, next_offset FROM signature_replay")
    return {r["topic_partition"]: r["next_offset"] for r in rows}


async def stored_header_hashes(conn: asyncpg.Connection, keys: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored header hash of each (chain, height) in `keys` that this validator holds."""
    rows = await conn.fetch(
        "SELECT b.chain_id, b.height, b.header_hash FROM blocks b"
        " JOIN unnest($1::int[], $2::bigint[]) AS k(chain_id, height) USING (chain_id, height)",
        [c for c, _ in keys],
        [h for _, h in keys],
    )
    return {(r["chain_id"], r["height"]): bytes(r["header_hash"]) for r in rows}


async def record_divergence(
    conn: asyncpg.Connection, chain_id: int, height: int, validator_id: str, theirs: bytes, ours: bytes
) -> None:
    await conn.execute(
        "INSERT INTO divergences (chain_id, height, validator_id, their_header_hash, our_header_hash)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        chain_id,
        height,
        validator_id,
        theirs,
        ours,
    )


async def record_equivocations(conn: asyncpg.Connection, signatures: list[ledger_pb2.BlockSignature]) -> None:
    """Keep second, different signed headers of a height (verified signatures) as evidence."""
    await conn.execute(
        "INSERT INTO equivocations (chain_id, height, validator_id, header, header_hash, signature)"
        " SELECT * FROM unnest($1::int[], $2::bigint[], $3::text[], $4::bytea[], $5::bytea[], $6::bytea[])"
        " ON CONFLICT DO NOTHING",
        *_signature_columns(signatures),
    )


def _signature_columns(signatures: list[ledger_pb2.BlockSignature]) -> list[list[object]]:
    """Column arrays of `signatures` for unnest: chain, height, validator, header, header hash, signature."""
    return [
        [s.chain_id for s in signatures],
        [s.height for s in signatures],
        [s.validator_id for s in signatures],
        [s.header for s in signatures],
        [s.header_hash for s in signatures],
        [s.signature.signature for s in signatures],
    ]


async def mark_published(conn: asyncpg.Connection, blocks: list[tuple[int, int]]) -> None:
    if blocks:
        await conn.execute(
            "UPDATE blocks SET results_published = true FROM unnest($1::int[], $2::bigint[]) AS f(c, h)"
            " WHERE chain_id = f.c AND height = f.h",
            [c for c, _ in blocks],
            [h for _, h in blocks],
        )


async def block_results(conn: asyncpg.Connection, chain_id: int, height: int) -> list[tuple[bool, bool, str, bytes]]:
    """(duplicate, claims_id, transaction_id, result bytes) of a block, in block order."""
    rows = await conn.fetch(
        "SELECT duplicate, claims_id, transaction_id, result_bytes FROM transactions"
        " WHERE chain_id = $1 AND height = $2 ORDER BY idx",
        chain_id,
        height,
    )
    return [(r["duplicate"], r["claims_id"], r["transaction_id"], bytes(r["result_bytes"])) for r in rows]


# Served by transactions_by_id (transaction_id, chain_id, height, idx): the rows come in the order asked for.
ORIGINAL_FINAL_RESULT = (
    "SELECT t.result_bytes FROM transactions t JOIN blocks b USING (chain_id, height)"
    " WHERE t.transaction_id = $1 AND t.claims_id AND NOT t.duplicate AND b.final"
    " ORDER BY t.chain_id, t.height, t.idx LIMIT 1"
)


async def original_final_result(conn: asyncpg.Connection, transaction_id: str) -> bytes | None:
    """The result of the first claiming record of `transaction_id`, if its block is final."""
    value = await conn.fetchval(ORIGINAL_FINAL_RESULT, transaction_id)
    return bytes(value) if value is not None else None
