"""Read side of a validator's store: blocks, results, invoice states and receipts."""

from __future__ import annotations

import asyncpg
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime import merkle


async def load_block(conn: asyncpg.Connection, chain_id: int, height: int) -> ledger_pb2.Block | None:
    """The stored block with the signatures that match its header (header field left empty)."""
    row = await conn.fetchrow(
        "SELECT header, header_hash, final FROM blocks WHERE chain_id = $1 AND height = $2", chain_id, height
    )
    if row is None:
        return None
    txs = await conn.fetch(
        "SELECT tx_bytes, result_bytes FROM transactions WHERE chain_id = $1 AND height = $2 ORDER BY idx",
        chain_id,
        height,
    )
    block = ledger_pb2.Block(
        header=bytes(row["header"]),
        transactions=[bytes(t["tx_bytes"]) for t in txs],
        results=[bytes(t["result_bytes"]) for t in txs],
        final=row["final"],
    )
    block.signatures.extend(await matching_signatures(conn, chain_id, height, bytes(row["header_hash"])))
    return block


async def matching_signatures(
    conn: asyncpg.Connection, chain_id: int, height: int, header_hash: bytes
) -> list[ledger_pb2.BlockSignature]:
    rows = await conn.fetch(
        "SELECT validator_id, signature FROM block_signatures"
        " WHERE chain_id = $1 AND height = $2 AND header_hash = $3 ORDER BY validator_id",
        chain_id,
        height,
        header_hash,
    )
    signatures = []
    for r in rows:
        sig = ledger_pb2.BlockSignature(
            chain_id=chain_id, height=height, header_hash=header_hash, validator_id=r["validator_id"]
        )
        sig.signature.algorithm = "Ed25519"
        sig.signature.key_id = r["validator_id"]
        sig.signature.signature = bytes(r["signature"])
        signatures.append(sig)
    return signatures


def receipt_from_block(block: ledger_pb2.Block, index: int) -> ledger_pb2.Receipt:
    """Receipt of the transaction at `index`: both audit paths, the header and the quorum signatures."""
    transactions = list(block.transactions)
    results = list(block.results)
    return ledger_pb2.Receipt(
        transaction=transactions[index],
        result=results[index],
        index=index,
        tree_size=len(transactions),
        transaction_audit_path=merkle.inclusion_proof(transactions, index),
        result_audit_path=merkle.inclusion_proof(results, index),
        header=block.header,
        signatures=list(block.signatures),
    )


async def locate_transaction(conn: asyncpg.Connection, transaction_id: str) -> asyncpg.Record | None:
    """Where a transaction was decided: its first claiming record, else its first record at all."""
    return await conn.fetchrow(
        "SELECT chain_id, height, idx, result_bytes FROM transactions WHERE transaction_id = $1"
        " ORDER BY (claims_id AND NOT duplicate) DESC, chain_id, height, idx LIMIT 1",
        transaction_id,
    )


async def final_receipt(conn: asyncpg.Connection, chain_id: int, height: int, index: int) -> ledger_pb2.Receipt | None:
    """The receipt, or None while the block is not final."""
    block = await load_block(conn, chain_id, height)
    if block is None or not block.final:
        return None
    return receipt_from_block(block, index)


async def invoice_row(conn: asyncpg.Connection, invoice_id: str, invoice_number: str) -> asyncpg.Record | None:
    if invoice_id:
        return await conn.fetchrow("SELECT * FROM invoice_states WHERE invoice_id = $1", invoice_id)
    return await conn.fetchrow(
        "SELECT * FROM invoice_states WHERE invoice_number = $1 ORDER BY invoice_id LIMIT 1", invoice_number
    )


async def final_tip(conn: asyncpg.Connection, chain_id: int) -> int:
    value = await conn.fetchval("SELECT max(height) FROM blocks WHERE chain_id = $1 AND final", chain_id)
    return int(value or 0)
