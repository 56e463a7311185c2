"""AuditChain: re-verify every stored block of a chain and name the height of anything edited.

Checks per block: the stored header hash is SHA-256 of the stored header bytes; the header names
this chain and height and links to the previous header's hash; its transaction count and the
RFC 6962 roots match the stored transactions, results and key registrations; each stored result
describes the transaction at its position; each accepted transaction's submitter signature verifies
with a key registered before it in the log and not revoked before it (the registry is rebuilt from the
audited, header-covered registrations with the validators' own rule, `apply_registration`, not read
from the submitter_keys table); every stored signature for the block verifies over the header bytes;
a final block carries a quorum of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime import merkle
from fapiao_runtime.ledger_trust import verify_signature
from google.protobuf.message import DecodeError

from ledger.chain import GENESIS_HASH
from ledger.state_machine import SubmitterKey, register_key

BLOCK_PAGE = 200


class Registry:
    """The submitter keys as the chain's log had them at a point: registrations applied in log order with
    the validators' rule, so a revocation takes effect where it sits in the log."""

    def __init__(self, authorities: Mapping[str, Ed25519PublicKey]) -> None:
        self.authorities = authorities
        self.keys: dict[str, SubmitterKey] = {}
        self.registration_ids: set[str] = set()

    def apply(self, signed_bytes: bytes) -> None:
        try:
            signed = ledger_pb2.SignedKeyRegistration.FromString(signed_bytes)
        except DecodeError:
            return
        register_key(self.keys, self.registration_ids, self.authorities, signed)


async def audit_chain(
    pool: asyncpg.Pool,
    chain_id: int,
    validator_keys: Mapping[str, Ed25519PublicKey],
    quorum: int,
    authority_keys: Mapping[str, Ed25519PublicKey],
) -> ledger_service_pb2.AuditChainResponse:
    response = ledger_service_pb2.AuditChainResponse(chain_id=chain_id)
    async with pool.acquire() as conn:
        submitters = Registry(authority_keys)  # grows with the registrations, in log order
        previous_hash = GENESIS_HASH
        expected_height = 1
        after = 0
        while True:
            blocks = await conn.fetch(
                "SELECT height, header, header_hash, final FROM blocks WHERE chain_id = $1 AND height > $2"
                " ORDER BY height LIMIT $3",
                chain_id,
                after,
                BLOCK_PAGE,
            )
            if not blocks:
                break
            for b in blocks:
                height = b["height"]
                problems = await _audit_block(
                    conn, chain_id, b, expected_height, previous_hash, submitters, validator_keys, quorum, response
                )
                for problem in problems:
                    response.findings.add(height=height, problem=problem)
                previous_hash = bytes(b["header_hash"])
                expected_height = height + 1
                after = height
    response.ok = not response.findings
    return response


async def _audit_block(
    conn: asyncpg.Connection,
    chain_id: int,
    row: asyncpg.Record,
    expected_height: int,
    previous_hash: bytes,
    submitters: Registry,
    validator_keys: Mapping[str, Ed25519PublicKey],
    quorum: int,
    response: ledger_service_pb2.AuditChainResponse,
) -> list[str]:
    problems = []
    height = row["height"]
    header_bytes = bytes(row["header"])
    header_hash = bytes(row["header_hash"])
    response.blocks_checked += 1
    if height != expected_height:
        problems.append(f"height gap: expected {expected_height}")
    if hashlib.sha256(header_bytes).digest() != header_hash:
        problems.append("stored header hash does not match the header bytes")
    try:
        header = ledger_pb2.BlockHeader.FromString(header_bytes)
    except DecodeError:
        return [*problems, "header bytes do not decode"]
    if header.chain_id != chain_id or header.height != height:
        problems.append("header names another chain or height")
    if header.previous_header_hash != previous_hash:
        problems.append("previous header hash does not link to the block before")
    txs = await conn.fetch(
        "SELECT idx, transaction_id, accepted, kafka_offset, tx_bytes, result_bytes FROM transactions"
        " WHERE chain_id = $1 AND height = $2 ORDER BY idx",
        chain_id,
        height,
    )
    registrations = await conn.fetch(
        "SELECT kafka_offset, signed_bytes FROM key_registrations WHERE chain_id = $1 AND height = $2"
        " ORDER BY kafka_offset",
        chain_id,
        height,
    )
    if merkle.root([bytes(r["signed_bytes"]) for r in registrations]) != header.registrations_root:
        problems.append("key registrations root does not match the stored registrations")
    pending_keys = [(r["kafka_offset"], bytes(r["signed_bytes"])) for r in registrations]
    response.transactions_checked += len(txs)
    tx_bytes = [bytes(t["tx_bytes"]) for t in txs]
    result_bytes = [bytes(t["result_bytes"]) for t in txs]
    if header.transaction_count != len(txs) or [t["idx"] for t in txs] != list(range(len(txs))):
        problems.append("transaction count or positions differ from the header")
    if merkle.root(tx_bytes) != header.transactions_root:
        problems.append("transactions root does not match the stored transactions")
    if merkle.root(result_bytes) != header.results_root:
        problems.append("results root does not match the stored results")
    for t, raw_tx, raw_result in zip(txs, tx_bytes, result_bytes, strict=True):
        while pending_keys and pending_keys[0][0] < t["kafka_offset"]:
            submitters.apply(pending_keys.pop(0)[1])
        problem = audit_transaction(t["idx"], raw_tx, raw_result, height, chain_id, submitters)
        if problem:
            problems.append(problem)
    valid = set()
    for s in await conn.fetch(
        "SELECT validator_id, header_hash, signature FROM block_signatures WHERE chain_id = $1 AND height = $2",
        chain_id,
        height,
    ):
        if bytes(s["header_hash"]) != header_hash:
            continue  # another validator's divergent header: reported in divergences, not an edit here
        sig = ledger_pb2.BlockSignature().signature
        sig.algorithm, sig.key_id, sig.signature = "Ed25519", s["validator_id"], bytes(s["signature"])
        if verify_signature(validator_keys, sig, header_bytes):
            valid.add(s["validator_id"])
        else:
            problems.append(f"signature of {s['validator_id']} does not verify over the header")
    if row["final"] and len(valid) < quorum:
        problems.append(f"final block has {len(valid)} valid signatures, quorum is {quorum}")
    for _, signed_bytes in pending_keys:  # registrations after the block's last transaction
        submitters.apply(signed_bytes)
    return problems


def audit_transaction(
    index: int, raw_tx: bytes, raw_result: bytes, height: int, chain_id: int, submitters: Registry
) -> str | None:
    """The problem with one stored transaction and its result, or None."""
    try:
        signed = ledger_pb2.SignedTransaction.FromString(raw_tx)
        result = ledger_pb2.TransactionResult.FromString(raw_result)
    except DecodeError:
        return f"transaction {index} or its result does not decode"
    if result.height != height or result.index != index or result.chain_id != chain_id:
        return f"result {index} names another position"
    if not result.accepted:
        return None
    try:
        body = ledger_pb2.TransactionBody.FromString(signed.body)
    except DecodeError:
        return f"accepted transaction {index} does not decode"
    if body.transaction_id != result.transaction_id:
        return f"result {index} names another transaction"
    key = submitters.keys.get(signed.signature.key_id)
    if key is None:
        return f"accepted transaction {index} is signed by a key not registered before it"
    if key.revoked:
        return f"accepted transaction {index} is signed by a key revoked before it"
    if not verify_signature({key.key_id: key.public_key}, signed.signature, signed.body):
        return f"accepted transaction {index} has no valid submitter signature"
    return None
