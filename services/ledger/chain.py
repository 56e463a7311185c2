"""One chain (one partition of ledger.tx.v1): executes records in log order and cuts blocks.

Cutting is deterministic (Hyperledger Fabric's Kafka orderer): a block ends right after its
max_txs-th transaction, or at the first TimeToCut marker naming the current height while
transactions are pending. Later markers for a height, markers for other heights and markers with
nothing pending are ignored. Nothing here reads a clock; the cut time comes from the marker.

The executor keeps the chain's state in memory as a cache over the validator's database: the
caller preloads invoice states and transaction ids for each fetched batch (`missing_*` / `preload`)
before feeding records, so execution never waits on I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime import merkle
from fapiao_runtime.ledger_trust import PublicKeys
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.state_machine import (
    BAD_SIGNATURE,
    KEY_REVOKED,
    MALFORMED,
    UNKNOWN_SUBMITTER_KEY,
    WRONG_CHAIN,
    Outcome,
    ParsedTransaction,
    SubmitterKey,
    execute,
    register_key,
)

GENESIS_HASH = b"\x00" * 32
# A transaction rejected before its signature was checked does not claim its id, so a forged record
# cannot block the real transaction with the same id.
UNCLAIMED_REASONS = frozenset({MALFORMED, WRONG_CHAIN, BAD_SIGNATURE, UNKNOWN_SUBMITTER_KEY, KEY_REVOKED})
CACHE_LIMIT = 200_000


@dataclass
class Registration:
    offset: int
    registration_id: str
    key: SubmitterKey
    signed_bytes: bytes


@dataclass
class CutBlock:
    """A block ready to be stored and signed."""

    chain_id: int
    height: int
    header: ledger_pb2.BlockHeader
    header_bytes: bytes
    header_hash: bytes
    transactions: list[bytes]
    results: list[bytes]
    outcomes: list[Outcome]
    offsets: list[int]
    next_offset: int
    registrations: list[Registration]
    states: dict[str, ledger_pb2.InvoiceState]
    state_bytes: dict[str, bytes]  # the same states, serialized deterministically (as stored and cached)


def claims_id(outcome: Outcome) -> bool:
    return bool(outcome.transaction_id) and outcome.result.rejection_reason not in UNCLAIMED_REASONS


@dataclass
class ChainExecutor:
    chain_id: int
    height: int
    previous_hash: bytes
    max_txs: int
    authorities: PublicKeys
    chains: int = 1  # chains of the ledger (partitions of ledger.tx.v1); an invoice belongs to one
    keys: dict[str, SubmitterKey] = field(default_factory=dict)
    registration_ids: set[str] = field(default_factory=set)
    # Cache of committed states: invoice id -> the serialized InvoiceState, or None when known not to
    # exist. Bytes, not messages: each protobuf message is an object the cycle collector must walk (a
    # full cache of messages lengthens every full collection and takes several times the memory), while
    # a dict of strings and bytes is not tracked at all; parsing one when it is used is cheap.
    states: dict[str, bytes | None] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    checked_ids: set[str] = field(default_factory=set)
    # The block being built.
    pending_txs: list[bytes] = field(default_factory=list)
    pending_outcomes: list[Outcome] = field(default_factory=list)
    pending_offsets: list[int] = field(default_factory=list)
    pending_states: dict[str, ledger_pb2.InvoiceState] = field(default_factory=dict)
    pending_registrations: list[Registration] = field(default_factory=list)

    # --- ChainView ---------------------------------------------------------------------------
    def key(self, key_id: str) -> SubmitterKey | None:
        return self.keys.get(key_id)

    def invoice(self, invoice_id: str) -> ledger_pb2.InvoiceState | None:
        state = self.pending_states.get(invoice_id)
        if state is not None:
            return state
        if invoice_id not in self.states:
            raise KeyError(f"invoice {invoice_id} was not preloaded")
        raw = self.states[invoice_id]
        return None if raw is None else ledger_pb2.InvoiceState.FromString(raw)

    def seen(self, transaction_id: str) -> bool:
        if transaction_id in self.seen_ids:
            return True
        if transaction_id not in self.checked_ids:
            raise KeyError(f"transaction {transaction_id} was not preloaded")
        return False

    # --- preloading --------------------------------------------------------------------------
    def missing_invoices(self, invoice_ids: set[str]) -> list[str]:
        return [i for i in invoice_ids if i not in self.states and i not in self.pending_states]

    def missing_transactions(self, transaction_ids: set[str]) -> list[str]:
        return [t for t in transaction_ids if t not in self.seen_ids and t not in self.checked_ids]

    def preload(
        self,
        states: dict[str, bytes | None],
        checked_ids: list[str],
        seen_ids: set[str],
    ) -> None:
        """Record what the database knows: `states` (serialized; None = absent) and which checked ids it
        has seen."""
        self.states.update(states)
        for tx_id in checked_ids:
            (self.seen_ids if tx_id in seen_ids else self.checked_ids).add(tx_id)

    def bound_caches(self) -> None:
        """Drop cached committed state past CACHE_LIMIT. Call before computing what a batch is missing."""
        # Committed state can be re-read from the database; the pending block's cannot.
        if len(self.states) > CACHE_LIMIT:
            self.states = {}  # the pending block's states stay in pending_states
        if len(self.seen_ids) + len(self.checked_ids) > CACHE_LIMIT:
            self.seen_ids = {o.transaction_id for o in self.pending_outcomes if claims_id(o)}
            self.checked_ids = set()

    # --- records -----------------------------------------------------------------------------
    def on_transaction(self, offset: int, aggregate_id: str, parsed: ParsedTransaction) -> CutBlock | None:
        outcome = execute(
            parsed,
            aggregate_id,
            self,
            chain_id=self.chain_id,
            chains=self.chains,
            height=self.height,
            index=len(self.pending_txs),
            offset=offset,
        )
        if claims_id(outcome):
            self.seen_ids.add(outcome.transaction_id)
        if outcome.new_state is not None:
            self.pending_states[outcome.invoice_id] = outcome.new_state
        self.pending_txs.append(parsed.signed.SerializeToString(deterministic=True))
        self.pending_outcomes.append(outcome)
        self.pending_offsets.append(offset)
        if len(self.pending_txs) >= self.max_txs:
            return self._cut(offset + 1, None)
        return None

    def on_time_to_cut(self, offset: int, marker: ledger_pb2.TimeToCut) -> CutBlock | None:
        if marker.height != self.height or not self.pending_txs:
            return None
        return self._cut(offset + 1, marker.cut_time)

    def on_registration(self, offset: int, signed: ledger_pb2.SignedKeyRegistration) -> bool:
        """Apply a key registration; True when it changed the registry."""
        entry = register_key(self.keys, self.registration_ids, self.authorities, signed)
        if entry is None:
            return False
        self.pending_registrations.append(
            Registration(offset, entry.registration_id, entry, signed.SerializeToString(deterministic=True))
        )
        return True

    def _cut(self, next_offset: int, cut_time: Timestamp | None) -> CutBlock:
        results = [o.result.SerializeToString(deterministic=True) for o in self.pending_outcomes]
        header = ledger_pb2.BlockHeader(
            chain_id=self.chain_id,
            height=self.height,
            previous_header_hash=self.previous_hash,
            transactions_root=merkle.root(self.pending_txs),
            results_root=merkle.root(results),
            registrations_root=merkle.root([r.signed_bytes for r in self.pending_registrations]),
            transaction_count=len(self.pending_txs),
            first_offset=self.pending_offsets[0],
            last_offset=self.pending_offsets[-1],
        )
        if cut_time is not None:
            header.cut_time.CopyFrom(cut_time)
        header_bytes = header.SerializeToString(deterministic=True)
        header_hash = hashlib.sha256(header_bytes).digest()
        state_bytes = {i: state.SerializeToString(deterministic=True) for i, state in self.pending_states.items()}
        self.states.update(state_bytes)
        block = CutBlock(
            chain_id=self.chain_id,
            height=self.height,
            header=header,
            header_bytes=header_bytes,
            header_hash=header_hash,
            transactions=self.pending_txs,
            results=results,
            outcomes=self.pending_outcomes,
            offsets=self.pending_offsets,
            next_offset=next_offset,
            registrations=self.pending_registrations,
            states=self.pending_states,
            state_bytes=state_bytes,
        )
        self.height += 1
        self.previous_hash = header_hash
        self.pending_txs, self.pending_outcomes, self.pending_offsets = [], [], []
        self.pending_states, self.pending_registrations = {}, []
        return block

    @property
    def has_pending(self) -> bool:
        return bool(self.pending_txs)
