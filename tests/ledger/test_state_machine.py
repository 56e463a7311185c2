"""Unit tests: the invoice state machine, the key registry and deterministic block cutting."""

from __future__ import annotations

import uuid

import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.invoice_ids import chain_of, invoice_id_for_number
from fapiao_runtime.ledger_client import (
    UNVERIFIED_REJECTIONS,
    SigningKey,
    sign_key_registration,
    sign_transaction,
)
from fapiao_stack.devnet import BUYER_TAX_ID, SELLER_TAX_ID, T, cancel, issue, partial, registration, reimburse
from google.protobuf.timestamp_pb2 import Timestamp
from ledger.chain import UNCLAIMED_REASONS, ChainExecutor, claims_id
from ledger.state_machine import parse_transaction

pytestmark = pytest.mark.unit

S = ledger_pb2.InvoiceLedgerStatus
AUTHORITY = SigningKey.generate("authority-1")
ISSUER = SigningKey.generate("issuer-1")


def iid(n: int) -> str:
    """The invoice id of test invoice number 2644 + n (16 digits): ISSUE ids derive from numbers."""
    return invoice_id_for_number(f"2644{n:016d}")


REIMBURSER = SigningKey.generate("reimb-1")
STRANGER = SigningKey.generate("stranger")


# The registration records at the head of the test log (the same records for every executor, as every
# validator reads the same log: they are under the block headers' registrations root).
REGISTRATIONS = [
    sign_key_registration(AUTHORITY, registration(ISSUER, ledger_pb2.SUBMITTER_ROLE_ISSUER, SELLER_TAX_ID)),
    sign_key_registration(AUTHORITY, registration(REIMBURSER, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r")),
]


def new_chain(max_txs: int = 1000, chain_id: int = 0, chains: int = 1) -> ChainExecutor:
    chain = ChainExecutor(
        chain_id=chain_id,
        chains=chains,
        height=1,
        previous_hash=b"\x00" * 32,
        max_txs=max_txs,
        authorities={"authority-1": AUTHORITY.public_key},
    )
    for offset, signed in enumerate(REGISTRATIONS):
        chain.on_registration(offset, signed)
    return chain


class Feeder:
    """Feeds transactions to a chain the way the validator does (bound caches, preload, execute),
    with dicts standing in for the committed tables."""

    def __init__(self, chain: ChainExecutor) -> None:
        self.chain = chain
        self.offset = 10
        self.blocks: list = []
        self.db_states: dict[str, bytes] = {}  # serialized, as the invoice_states table holds them
        self.db_claimed: set[str] = set()

    def _stored(self, block) -> None:  # type: ignore[no-untyped-def]
        self.blocks.append(block)
        self.db_states.update(block.state_bytes)
        self.db_claimed.update(o.transaction_id for o in block.outcomes if claims_id(o))

    def __call__(self, signed: ledger_pb2.SignedTransaction, key: str | None = None) -> ledger_pb2.TransactionResult:
        parsed = parse_transaction(signed)
        invoice_id = key if key is not None else (parsed.body.invoice_id if parsed.body else "")
        ids = {invoice_id} | ({parsed.body.invoice_id} if parsed.body else set())
        self.chain.bound_caches()
        missing_txs = self.chain.missing_transactions({parsed.body.transaction_id} if parsed.body else set())
        self.chain.preload(
            {i: self.db_states.get(i) for i in self.chain.missing_invoices(ids)},
            missing_txs,
            {t for t in missing_txs if t in self.db_claimed},
        )
        block = self.chain.on_transaction(self.offset, invoice_id, parsed)
        self.offset += 1
        outcome = self.chain.pending_outcomes[-1] if block is None else block.outcomes[-1]
        if block is not None:
            self._stored(block)
        return outcome.result

    def cut(self, height: int, seconds: int = 1):  # type: ignore[no-untyped-def]
        block = self.chain.on_time_to_cut(
            self.offset, ledger_pb2.TimeToCut(height=height, cut_time=Timestamp(seconds=seconds))
        )
        self.offset += 1
        if block is not None:
            self._stored(block)
        return block


def test_lifecycle_and_rejection_reasons() -> None:
    feed = Feeder(new_chain())
    inv = iid(1)
    assert feed(issue(ISSUER, inv, "26440000000000000001", 10_000, buyer=BUYER_TAX_ID)).accepted
    assert feed(issue(ISSUER, inv, "26440000000000000001")).rejection_reason == "ALREADY_ISSUED"
    assert (
        feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, "inv-x", BUYER_TAX_ID)).rejection_reason
        == "UNKNOWN_INVOICE"
    )
    assert (
        feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, inv, "OTHER")).rejection_reason
        == "ORGANISATION_NOT_ALLOWED"
    )
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_UNLOCK, inv, BUYER_TAX_ID)).rejection_reason == "NOT_LOCKED"
    locked = feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, inv, BUYER_TAX_ID))
    assert locked.accepted and locked.state.status == S.INVOICE_LEDGER_STATUS_LOCKED
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, inv, BUYER_TAX_ID)).rejection_reason == "ALREADY_LOCKED"
    unlocked = feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_UNLOCK, inv, BUYER_TAX_ID))
    assert unlocked.accepted and unlocked.state.status == S.INVOICE_LEDGER_STATUS_ISSUED
    assert not unlocked.state.lock_holder_tax_id
    assert feed(partial(ISSUER, inv, 10_001)).rejection_reason == "AMOUNT_EXCEEDED"
    assert feed(partial(ISSUER, inv, 0)).rejection_reason == "MALFORMED"
    reduced = feed(partial(ISSUER, inv, 4_000))
    assert reduced.accepted and reduced.state.reimbursable_fen == 6_000 and reduced.state.total_fen == 10_000
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, inv, BUYER_TAX_ID)).accepted
    closed = feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_CLOSE, inv, BUYER_TAX_ID))
    assert closed.accepted and closed.state.status == S.INVOICE_LEDGER_STATUS_CLOSED
    for tx in (
        reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, inv, BUYER_TAX_ID),
        reimburse(REIMBURSER, T.TRANSACTION_TYPE_CLOSE, inv, BUYER_TAX_ID),
        cancel(ISSUER, inv),
    ):
        assert feed(tx).rejection_reason == "ALREADY_CLOSED"


def test_lock_holder_rules_and_cancel() -> None:
    feed = Feeder(new_chain())
    assert feed(issue(ISSUER, iid(2), "26440000000000000002")).accepted  # a person's invoice: any organisation
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, iid(2), "ORG-A")).accepted
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, iid(2), "ORG-B")).rejection_reason == "ALREADY_LOCKED"
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_UNLOCK, iid(2), "ORG-B")).rejection_reason == "NOT_LOCK_HOLDER"
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_CLOSE, iid(2), "ORG-B")).rejection_reason == "NOT_LOCK_HOLDER"
    cancelled = feed(cancel(ISSUER, iid(2)))
    assert cancelled.accepted and cancelled.state.status == S.INVOICE_LEDGER_STATUS_CANCELLED
    assert cancelled.state.reimbursable_fen == 0
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_UNLOCK, iid(2), "ORG-A")).rejection_reason == "CANCELLED"
    assert feed(partial(ISSUER, iid(2), 1)).rejection_reason == "CANCELLED"
    # Partial red letter of the whole remaining amount cancels.
    assert feed(issue(ISSUER, iid(3), "26440000000000000003", 500)).accepted
    assert feed(partial(ISSUER, iid(3), 500)).state.status == S.INVOICE_LEDGER_STATUS_CANCELLED


def test_signatures_keys_roles_and_duplicates() -> None:
    chain = new_chain()
    feed = Feeder(chain)
    assert feed(issue(STRANGER, iid(4), "26440000000000000004")).rejection_reason == "UNKNOWN_SUBMITTER_KEY"
    forged = issue(ISSUER, iid(4), "26440000000000000004")
    forged.signature.signature = bytes(64)
    assert feed(forged).rejection_reason == "BAD_SIGNATURE"
    # The forged record did not claim its transaction id: the genuine one with that id still counts.
    body = ledger_pb2.TransactionBody.FromString(forged.body)
    genuine = sign_transaction(ledger_pb2.TransactionBody.FromString(forged.body), ISSUER)
    assert feed(genuine).accepted
    assert feed(genuine).rejection_reason == "DUPLICATE_TRANSACTION"
    assert body.transaction_id == ledger_pb2.TransactionBody.FromString(genuine.body).transaction_id
    # Roles: a reimburser cannot issue or cancel, an issuer cannot lock; issuers only for their seller id.
    assert feed(issue(REIMBURSER, iid(5), "26440000000000000005")).rejection_reason == "SUBMITTER_NOT_AUTHORIZED"
    assert (
        feed(reimburse(ISSUER, T.TRANSACTION_TYPE_LOCK, iid(4), "ORG")).rejection_reason == "SUBMITTER_NOT_AUTHORIZED"
    )
    other_seller = SigningKey.generate("issuer-2")
    chain.on_registration(
        50, sign_key_registration(AUTHORITY, registration(other_seller, ledger_pb2.SUBMITTER_ROLE_ISSUER, "OTHER"))
    )
    assert feed(cancel(other_seller, iid(4))).rejection_reason == "SUBMITTER_NOT_AUTHORIZED"
    # Wrong chain key (record key differs from the body's invoice) and wrong action are malformed.
    assert feed(cancel(ISSUER, iid(4)), key="inv-elsewhere").rejection_reason == "MALFORMED"
    mismatched = ledger_pb2.TransactionBody(
        transaction_id=str(uuid.uuid4()), type=T.TRANSACTION_TYPE_LOCK, invoice_id=iid(4)
    )
    mismatched.close.organisation_tax_id = "ORG"
    assert feed(sign_transaction(mismatched, REIMBURSER)).rejection_reason == "MALFORMED"
    assert feed(ledger_pb2.SignedTransaction(body=b"\xff\xff")).rejection_reason == "MALFORMED"
    # Revocation (only by the authority) takes effect at its position in the log.
    fake_authority = SigningKey.generate("authority-1")
    chain.on_registration(
        60,
        sign_key_registration(
            fake_authority, registration(REIMBURSER, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r", revoked=True)
        ),
    )
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, iid(4), "ORG")).accepted
    chain.on_registration(
        61,
        sign_key_registration(
            AUTHORITY, registration(REIMBURSER, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r", revoked=True)
        ),
    )
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_UNLOCK, iid(4), "ORG")).rejection_reason == "KEY_REVOKED"
    # A revoked key id cannot be registered again.
    assert not chain.on_registration(
        62, sign_key_registration(AUTHORITY, registration(REIMBURSER, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r"))
    )


def test_blocks_cut_by_size_and_first_marker_for_current_height_only() -> None:
    feed = Feeder(new_chain(max_txs=3))
    for i in range(3):
        feed(issue(ISSUER, iid(100 + i), f"264400000000000001{i:02d}"))
    assert len(feed.blocks) == 1 and feed.blocks[0].height == 1 and len(feed.blocks[0].transactions) == 3
    assert not feed.blocks[0].header.HasField("cut_time")
    assert feed.cut(2) is None  # nothing pending: ignored
    feed(issue(ISSUER, iid(210), "26440000000000000210"))
    assert feed.cut(1) is None  # marker for a past height: ignored
    assert feed.cut(3) is None  # marker for a future height: ignored
    block = feed.cut(2, seconds=42)
    assert block is not None and block.height == 2 and block.header.cut_time.seconds == 42
    assert block.header.previous_header_hash == feed.blocks[0].header_hash
    feed(issue(ISSUER, iid(211), "26440000000000000211"))
    assert feed.cut(2) is None  # a later marker for height 2 does not cut height 3
    assert feed.chain.height == 3 and feed.chain.has_pending


def test_same_log_gives_same_headers_on_independent_executors() -> None:
    txs = [issue(ISSUER, iid(i), f"2644{i:016d}") for i in range(7)]
    txs += [reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, iid(i % 7), f"ORG-{i}") for i in range(10)]
    runs = []
    for _ in range(2):
        feed = Feeder(new_chain(max_txs=4))
        for n, tx in enumerate(txs):
            feed(tx)
            if n == 9:
                feed.cut(feed.chain.height, seconds=5)
        runs.append([(b.height, b.header_hash, b.results) for b in feed.blocks])
    assert runs[0] == runs[1] and len(runs[0]) >= 4


def test_bounded_caches_refill_from_the_database_without_changing_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.chain

    monkeypatch.setattr(ledger.chain, "CACHE_LIMIT", 4)
    feed = Feeder(new_chain(max_txs=3))
    issued = [issue(ISSUER, iid(i), f"2644{i:016d}") for i in range(12)]
    for tx in issued:
        assert feed(tx).accepted
    assert len(feed.chain.states) <= 4 + 3  # evicted down to the pending block, then refilled per batch
    # Evicted invoices and transaction ids are found again in the (fake) tables.
    assert feed(reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, iid(0), "ORG")).accepted
    assert feed(issue(ISSUER, iid(1), "26440000000000000001")).rejection_reason == "ALREADY_ISSUED"
    assert feed(issued[2]).rejection_reason == "DUPLICATE_TRANSACTION"


def test_an_issue_must_use_the_invoice_id_derived_from_its_number() -> None:
    feed = Feeder(new_chain())
    number = "26440000000000000042"
    # Another id for a number would put a second copy of the invoice on another chain.
    assert feed(issue(ISSUER, "inv-elsewhere", number)).rejection_reason == "INVOICE_ID_NOT_FROM_NUMBER"
    assert feed(issue(ISSUER, iid(1), number)).rejection_reason == "INVOICE_ID_NOT_FROM_NUMBER"
    assert feed(issue(ISSUER, iid(42), number)).accepted
    assert feed(issue(ISSUER, iid(42), number)).rejection_reason == "ALREADY_ISSUED"


def test_headers_cover_the_key_registrations_of_their_stretch_of_the_log() -> None:
    from fapiao_runtime import merkle

    feed = Feeder(new_chain(max_txs=1))
    feed(issue(ISSUER, iid(50), f"2644{50:016d}"))
    feed(issue(ISSUER, iid(51), f"2644{51:016d}"))
    first, second = feed.blocks[0].header, feed.blocks[1].header
    assert first.registrations_root == merkle.root([r.SerializeToString(deterministic=True) for r in REGISTRATIONS])
    assert second.registrations_root == merkle.root([])


@pytest.mark.parametrize("tx_type", [0, 99])
def test_a_transaction_of_no_known_type_is_malformed(tx_type: int) -> None:
    """A validly signed body with an unspecified or unknown type and no action is rejected, not a crash
    that would stop every validator on the same record."""
    feed = Feeder(new_chain())
    inv = iid(7)
    assert feed(issue(ISSUER, inv, "26440000000000000007")).accepted
    body = ledger_pb2.TransactionBody(transaction_id=str(uuid.uuid4()), invoice_id=inv, type=tx_type)  # type: ignore[arg-type]
    result = feed(sign_transaction(body, ISSUER))
    assert not result.accepted and result.rejection_reason == "MALFORMED"


def test_records_on_another_chain_than_their_invoice_are_refused() -> None:
    """Kafka lets a producer pick any partition. An invoice lives on one chain only, or a second chain
    could lock and close it again: a LOCK or ISSUE sent elsewhere is WRONG_CHAIN and claims no id."""
    numbers = [f"2644{n:016d}" for n in range(100, 140)]
    home = {number: chain_of(invoice_id_for_number(number), 2) for number in numbers}
    on_0 = next(n for n in numbers if home[n] == 0)
    on_1 = next(n for n in numbers if home[n] == 1)
    chain0, chain1 = Feeder(new_chain(chain_id=0, chains=2)), Feeder(new_chain(chain_id=1, chains=2))
    inv = invoice_id_for_number(on_0)
    assert chain0(issue(ISSUER, inv, on_0)).accepted
    # The same database as chain 0's (one validator): chain 1 must not act on the invoice's state.
    chain1.db_states = chain0.db_states
    chain0.cut(1)
    lock = reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, inv, "91440300ORG0000001")
    wrong = chain1(lock)
    assert not wrong.accepted and wrong.rejection_reason == "WRONG_CHAIN"
    assert not claims_id(chain1.chain.pending_outcomes[-1])
    # The same signed LOCK on the invoice's own chain is decided there (its id was not claimed).
    assert chain0(lock).accepted
    other = invoice_id_for_number(on_1)
    assert chain0(issue(ISSUER, other, on_1)).rejection_reason == "WRONG_CHAIN"
    assert chain1(issue(ISSUER, other, on_1)).accepted


def test_submitters_know_which_rejections_were_never_verified() -> None:
    """Submitters ignore these rejections (a copied id can cause one): the list they use is the ledger's."""
    assert UNCLAIMED_REASONS == UNVERIFIED_REJECTIONS


def test_the_audit_rebuilds_the_registry_with_revocations_in_log_order() -> None:
    """AuditChain judges an accepted transaction's signature against the keys as the log had them at
    its position: registered by an authority before it, not revoked before it."""
    from ledger.audit import Registry, audit_transaction

    registry = Registry({"authority-1": AUTHORITY.public_key})
    for signed in REGISTRATIONS:
        registry.apply(signed.SerializeToString())
    # A registration signed by someone other than an authority changes nothing.
    registry.apply(
        sign_key_registration(
            STRANGER, registration(STRANGER, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r")
        ).SerializeToString()
    )

    def problem(tx: ledger_pb2.SignedTransaction, index: int = 0) -> str | None:
        body = ledger_pb2.TransactionBody.FromString(tx.body)
        result = ledger_pb2.TransactionResult(
            transaction_id=body.transaction_id, accepted=True, chain_id=0, height=7, index=index
        )
        return audit_transaction(index, tx.SerializeToString(), result.SerializeToString(), 7, 0, registry)

    lock = reimburse(REIMBURSER, T.TRANSACTION_TYPE_LOCK, iid(1), BUYER_TAX_ID)
    assert problem(lock) is None
    assert problem(reimburse(STRANGER, T.TRANSACTION_TYPE_LOCK, iid(1), BUYER_TAX_ID)) == (
        "accepted transaction 0 is signed by a key not registered before it"
    )
    forged = ledger_pb2.SignedTransaction()
    forged.CopyFrom(lock)
    forged.signature.signature = bytes(64)
    assert problem(forged) == "accepted transaction 0 has no valid submitter signature"

    revocation = registration(REIMBURSER, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r", revoked=True)
    registry.apply(sign_key_registration(AUTHORITY, revocation).SerializeToString())
    assert problem(lock, index=3) == "accepted transaction 3 is signed by a key revoked before it"
    # A rejected transaction needs no valid key: rejecting it was the right outcome.
    rejected = ledger_pb2.TransactionResult(
        transaction_id=ledger_pb2.TransactionBody.FromString(lock.body).transaction_id,
        accepted=False,
        chain_id=0,
        height=7,
        index=4,
    )
    assert audit_transaction(4, lock.SerializeToString(), rejected.SerializeToString(), 7, 0, registry) is None
