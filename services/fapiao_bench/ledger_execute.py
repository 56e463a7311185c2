"""A validator's execution cost alone: one chain fed in process, no broker, no database, no other process.

The ledger area's other figures depend on the broker, PostgreSQL, four processes and how they share
two cores. This one is the CPU time of one process doing exactly what a validator does with each
fetched transaction record: decode the envelope, check the submitter's Ed25519 signature, run the
state machine, and cut blocks (Merkle roots, header hash); the best of a few rounds. The machine's own
speed still shows in it (compare it with the Ed25519 baselines of the same run), but nothing else does.

ledger_execute_us_per_tx: CPU microseconds per transaction (half ISSUE, half LOCK, blocks of 500).
ledger_execute_signature_share: the share of it spent in the Ed25519 checks (measured apart, on the
same signatures, through `ledger_trust.verify_signature` as the state machine calls it).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.invoice_ids import chain_of, invoice_id_for_number
from fapiao_runtime.ledger_client import SigningKey, sign_key_registration, transaction_event
from fapiao_runtime.ledger_trust import PublicKeys, verify_signature
from fapiao_stack.devnet import SELLER_TAX_ID, T, issue, registration, reimburse
from ledger.chain import ChainExecutor
from ledger.records import decode_record

CHAINS = 2
BLOCK_TXS = 500
ORGANISATION = "91440300ORG0000001"


@dataclass
class Workload:
    """Transaction records of one chain as a validator reads them, and the registrations before them."""

    authority: SigningKey
    registrations: list[ledger_pb2.SignedKeyRegistration]
    records: list[bytes]
    signed: list[ledger_pb2.SignedTransaction]
    submitter_keys: PublicKeys


def workload(invoices: int) -> Workload:
    """An ISSUE for each of `invoices` numbers on chain 0, then a LOCK of each."""
    authority = SigningKey.generate("authority-1")
    issuer = SigningKey.generate("issuer-1")
    reimburser = SigningKey.generate("reimb-1")
    registrations = [
        sign_key_registration(authority, registration(issuer, ledger_pb2.SUBMITTER_ROLE_ISSUER, SELLER_TAX_ID)),
        sign_key_registration(authority, registration(reimburser, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r")),
    ]
    if invoices <= 0:
        raise ValueError("at least one invoice is needed")
    ours: list[tuple[str, str]] = []  # (number, invoice id) of numbers whose invoice lives on chain 0
    for n in itertools.count():
        number = f"2644{n:016d}"
        invoice_id = invoice_id_for_number(number)
        if chain_of(invoice_id, CHAINS) == 0:
            ours.append((number, invoice_id))
            if len(ours) == invoices:
                break
    signed = [issue(issuer, invoice_id, number) for number, invoice_id in ours]
    signed += [reimburse(reimburser, T.TRANSACTION_TYPE_LOCK, invoice_id, ORGANISATION) for _, invoice_id in ours]
    records = []
    for tx in signed:
        invoice_id = ledger_pb2.TransactionBody.FromString(tx.body).invoice_id
        records.append(transaction_event(tx, invoice_id, "bench").envelope_bytes)
    keys = {issuer.key_id: issuer.public_key, reimburser.key_id: reimburser.public_key}
    return Workload(authority, registrations, records, signed, keys)


def execute_once(work: Workload) -> int:
    """Feed every record to a fresh chain as the validator does (a fetched batch is one block's worth);
    return the number of transactions accepted."""
    chain = ChainExecutor(
        chain_id=0,
        chains=CHAINS,
        height=1,
        previous_hash=b"\x00" * 32,
        max_txs=BLOCK_TXS,
        authorities={work.authority.key_id: work.authority.public_key},
    )
    for offset, signed in enumerate(work.registrations):
        chain.on_registration(offset, signed)
    accepted = 0
    first = len(work.registrations)
    for start in range(0, len(work.records), BLOCK_TXS):
        batch = [decode_record(first + start + k, raw) for k, raw in enumerate(work.records[start : start + BLOCK_TXS])]
        chain.bound_caches()
        missing_invoices = chain.missing_invoices({r.aggregate_id for r in batch})
        missing_txs = chain.missing_transactions({r.tx.body.transaction_id for r in batch if r.tx and r.tx.body})
        chain.preload(dict.fromkeys(missing_invoices), missing_txs, set())  # nothing stored before
        for record in batch:
            assert record.tx is not None
            block = chain.on_transaction(record.offset, record.aggregate_id, record.tx)
            if block is not None:
                accepted += sum(1 for o in block.outcomes if o.result.accepted)
    accepted += sum(1 for o in chain.pending_outcomes if o.result.accepted)
    return accepted


def verify_once(work: Workload) -> None:
    for tx in work.signed:
        # One key per call, as the state machine passes the submitter's registered key.
        key_id = tx.signature.key_id
        if not verify_signature({key_id: work.submitter_keys[key_id]}, tx.signature, tx.body):
            raise AssertionError("a benchmark transaction's signature did not verify")


def _best_cpu_seconds(run: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def measure(invoices: int = 2_000, rounds: int = 3) -> dict[str, float]:
    """The figures above. Raises AssertionError if the executor did not accept every transaction
    (then it would be timing rejections, not the work of a real block)."""
    work = workload(invoices)
    accepted = execute_once(work)  # also warms caches and code paths
    if accepted != len(work.records):
        raise AssertionError(f"the executor accepted {accepted} of {len(work.records)} benchmark transactions")
    execute_s = _best_cpu_seconds(lambda: execute_once(work), rounds)
    verify_s = _best_cpu_seconds(lambda: verify_once(work), rounds)
    return {
        "ledger_execute_us_per_tx": execute_s / len(work.records) * 1e6,
        "ledger_execute_signature_share": min(1.0, verify_s / execute_s),
    }
