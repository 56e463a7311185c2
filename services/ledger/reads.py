"""Read side of a validator's store: blocks, results, invoice states and receipts."""

from __future__ import annotations

from collections import OrderedDict

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


class BlockTrees:
    """The transaction and result Merkle trees of recently read blocks, for receipts.

    A receipt needs the audit paths of one leaf, and building them takes every leaf of the block:
    without this cache each receipt would read a whole block and hash it twice. Keyed by header hash
    as well, so a tree is only ever reused for the block it was built from; bounded (LRU).
    """

    def __init__(self, max_blocks: int = 256) -> None:
        self._max = max_blocks
        self._trees: OrderedDict[tuple[int, int, bytes], tuple[merkle.MerkleTree, merkle.MerkleTree]] = OrderedDict()

    async def get(
        self, conn: asyncpg.Connection, chain_id: int, height: int, header_hash: bytes
    ) -> tuple[merkle.MerkleTree, merkle.MerkleTree]:
        key = (chain_id, height, header_hash)
        trees = self._trees.get(key)
        if trees is not None:
            self._trees.move_to_end(key)
            return trees
        # The leaf hashes (RFC 6962: SHA-256 of 0x00 || data) are computed by PostgreSQL: 64 bytes
        # per transaction cross the connection instead of the transactions themselves.
        rows = await conn.fetch(
            "SELECT sha256('\\x00'::bytea || tx_bytes) AS tx_leaf,"
            " sha256('\\x00'::bytea || result_bytes) AS result_leaf"
            " FROM transactions WHERE chain_id = $1 AND height = $2 ORDER BY idx",
            chain_id,
            height,
        )
        trees = (
            merkle.MerkleTree([bytes(r["tx_leaf"]) for r in rows]),
            merkle.MerkleTree([bytes(r["result_leaf"]) for r in rows]),
        )
        self._trees[key] = trees
        if len(self._trees) > self._max:
            self._trees.popitem(last=False)
        return trees


async def transaction_receipt(
    conn: asyncpg.Connection, transaction_id: str, trees: BlockTrees
) -> tuple[bool, ledger_pb2.Receipt | None]:
    """(seen, receipt) of where a transaction was decided: its first claiming record, else its first
    record at all. The receipt holds both audit paths, the header and the quorum signatures; it is None
    while the block is not final (seen False: the ledger never saw the transaction)."""
    row = await conn.fetchrow(
        "SELECT t.chain_id, t.height, t.idx, t.tx_bytes, t.result_bytes, b.header, b.header_hash, b.final"
        " FROM transactions t JOIN blocks b USING (chain_id, height) WHERE t.transaction_id = $1"
        " ORDER BY (t.claims_id AND NOT t.duplicate) DESC, t.chain_id, t.height, t.idx LIMIT 1",
        transaction_id,
    )
    if row is None:
        return False, None
    if not row["final"]:
        return True, None
    chain_id, height, index = row["chain_id"], row["height"], row["idx"]
    header_hash = bytes(row["header_hash"])
    tx_tree, result_tree = await trees.get(conn, chain_id, height, header_hash)
    return True, ledger_pb2.Receipt(
        transaction=bytes(row["tx_bytes"]),
        result=bytes(row["result_bytes"]),
        index=index,
        tree_size=tx_tree.size,
        transaction_audit_path=tx_tree.proof(index),
        result_audit_path=result_tree.proof(index),
        header=bytes(row["header"]),
        signatures=await matching_signatures(conn, chain_id, height, header_hash),
    )


# Served by invoice_states_by_number (invoice_number, invoice_id): the row comes in the order asked for.
INVOICE_BY_NUMBER = "SELECT * FROM invoice_states WHERE invoice_number = $1 ORDER BY invoice_id LIMIT 1"


async def invoice_row(conn: asyncpg.Connection, invoice_id: str, invoice_number: str) -> asyncpg.Record | None:
    if invoice_id:
        return await conn.fetchrow("SELECT * FROM invoice_states WHERE invoice_id = $1", invoice_id)
    return await conn.fetchrow(INVOICE_BY_NUMBER, invoice_number)


async def final_tip(conn: asyncpg.Connection, chain_id: int) -> int:
    value = await conn.fetchval("SELECT max(height) FROM blocks WHERE chain_id = $1 AND final", chain_id)
    return int(value or 0)
