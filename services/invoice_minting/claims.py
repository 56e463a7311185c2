"""Claiming an offer: validate, number, tax, sign and submit, many claims per transaction.

A claim batch runs in ONE PostgreSQL transaction: it locks the claimed offers (in token-hash order),
decides each claim (unknown, claimed, expired, ...), reserves one block of sequence numbers per
(region, year) with a single counter update, signs the invoices and their ISSUE transactions, and writes
invoices, offers and outbox rows. Group commit keeps the hot counter row locked for one short
transaction per batch instead of per claim; numbers stay gapless because only claims that will be
written get a number, and a failed transaction returns all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime import tracing
from fapiao_runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    FapiaoError,
    NotFound,
    ResourceExhausted,
    Unavailable,
    unavailable_cause,
)
from fapiao_runtime.invoice_ids import invoice_id_for_number
from prometheus_client import Counter, Histogram

from invoice_minting import red_letter
from invoice_minting.deps import MintingDeps
from invoice_minting.invoice_format import beijing_date, invoice_number, issue_date_text
from invoice_minting.signing import build_body, issue_submission, sign_invoice
from invoice_minting.store import MintingStore, NewInvoice, UnitOfWork
from invoice_minting.tax import lines_for_payment

log = logging.getLogger(__name__)

CLAIMS = Counter("fapiao_minting_claims_total", "Claims decided, by outcome (OK or the rejection reason)", ["outcome"])
CLAIM_BATCH_SIZE = Histogram(
    "fapiao_minting_claim_batch_size",
    "Claims per group-commit transaction",
    buckets=(1, 2, 5, 10, 25, 50, 100, 200, 500),
)

ClaimOutcome = invoice_pb2.Invoice | FapiaoError


@dataclass
class ClaimCommand:
    """A validated claim: buyer already normalised, idempotency key checked."""

    token_hash: bytes
    buyer: invoice_pb2.Party
    idempotency_key: str
    request_hash: bytes = b""
    future: asyncio.Future[invoice_pb2.Invoice] | None = field(default=None, repr=False)
    # The trace of the request that made the claim; its ISSUE carries it though written by a batch.
    traceparent: str = field(default_factory=tracing.current, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.request_hash:
            self.request_hash = hashlib.sha256(
                self.token_hash + self.buyer.SerializeToString(deterministic=True)
            ).digest()


def _decide(
    cmd: ClaimCommand, row: asyncpg.Record | None, prior: tuple[str, bytes, uuid.UUID] | None, now: dt.datetime
) -> FapiaoError | uuid.UUID | None:
    """An error, the id of the invoice a retry gets back, or None when the claim should be minted."""
    if row is None:
        return NotFound("UNKNOWN_TOKEN", "no claim offer for this token")
    if prior is not None:
        key, request_hash, invoice_id = prior
        if cmd.idempotency_key != key:
            return FailedPrecondition("ALREADY_CLAIMED", "this invoice has already been claimed")
        if cmd.request_hash != request_hash:
            return AlreadyExists("IDEMPOTENCY_CONFLICT", "idempotency_key was used with a different buyer")
        return invoice_id
    if row["refunded_fen"] >= row["amount_fen"]:
        return FailedPrecondition("PAYMENT_REFUNDED", "the payment was refunded in full")
    if row["expires_at"] <= now:
        return FailedPrecondition("TOKEN_EXPIRED", "the claim offer has expired")
    if row["legal_name"] is None:
        return FailedPrecondition("MERCHANT_NOT_REGISTERED", "the merchant's issuer profile is not known yet")
    if row["key_id"] is None:
        return FailedPrecondition("ISSUER_KEY_MISSING", "the merchant has no active issuer key")
    return None


async def mint_claims(
    store: MintingStore, deps: MintingDeps, commands: list[ClaimCommand], now: dt.datetime
) -> list[ClaimOutcome]:
    """Decide and mint `commands` inside the store's transaction; one outcome per command, in order."""
    by_hash = await store.lock_offers_to_claim(list({c.token_hash for c in commands}))
    outcomes: list[ClaimOutcome | uuid.UUID | None] = [None] * len(commands)
    claimed: dict[bytes, tuple[str, bytes, uuid.UUID]] = {}
    to_mint: list[tuple[int, asyncpg.Record, uuid.UUID]] = []
    for index, cmd in enumerate(commands):
        row = by_hash.get(cmd.token_hash)
        prior = claimed.get(cmd.token_hash)
        if prior is None and row is not None and row["invoice_id"] is not None:
            prior = (row["claim_idempotency_key"], row["claim_request_hash"], row["invoice_id"])
        decision = _decide(cmd, row, prior, now)
        if decision is None:
            assert row is not None
            invoice_id = uuid.uuid4()
            claimed[cmd.token_hash] = (cmd.idempotency_key, cmd.request_hash, invoice_id)
            to_mint.append((index, row, invoice_id))
            outcomes[index] = invoice_id
        else:
            outcomes[index] = decision

    day = beijing_date(now)
    by_region: dict[str, list[tuple[int, asyncpg.Record, uuid.UUID]]] = defaultdict(list)
    for item in to_mint:
        by_region[item[1]["region_code"]].append(item)
    new_invoices: list[NewInvoice] = []
    derived: dict[uuid.UUID, uuid.UUID] = {}
    refunded: set[uuid.UUID] = set()
    events = []
    for region in sorted(by_region):  # counters locked in a fixed order: no deadlocks between batches
        group = by_region[region]
        first = await store.allocate_sequences(region, day.year, len(group))
        for offset, (index, row, placeholder) in enumerate(group):
            payment = payments_pb2.Payment.FromString(row["payment"])
            key = deps.keys.signing_key(row["key_id"], row["private_key_sealed"])
            number = invoice_number(day.year, region, deps.settings.channel, first + offset)
            # The ledger accepts an ISSUE only under the id derived from its number (one number, one chain).
            invoice_id = uuid.UUID(invoice_id_for_number(number))
            derived[placeholder] = invoice_id
            body = build_body(
                invoice_id=invoice_id,
                invoice_number=number,
                kind=invoice_pb2.INVOICE_KIND_ORDINARY,
                seller=invoice_pb2.Party(
                    kind=invoice_pb2.PARTY_KIND_COMPANY, name=row["legal_name"], tax_id=row["tax_id"]
                ),
                buyer=commands[index].buyer,
                lines=lines_for_payment(
                    row["amount_fen"],
                    payment.items,
                    row["default_tax_classification_code"],
                    row["default_item_name"],
                    row["default_tax_rate_bp"],
                ),
                issue_date=issue_date_text(day),
                merchant_id=row["merchant_id"],
                payment_id=row["payment_id"],
                region_code=region,
            )
            signed = sign_invoice(body, key)
            with tracing.continued_from(commands[index].traceparent):
                transaction_id, event = issue_submission(invoice_id, signed, key, deps.producer)
            events.append(event)
            new_invoices.append(
                NewInvoice(invoice_id, body, signed, None, transaction_id, 1, invoice_id, body.total_fen)
            )
    # Claims answered with a placeholder id (numbers were not allocated yet) get the derived one.
    to_mint = [(index, row, derived[placeholder]) for index, row, placeholder in to_mint]
    outcomes = [derived.get(o, o) if isinstance(o, uuid.UUID) else o for o in outcomes]
    if new_invoices:
        await store.insert_invoices(new_invoices)
        await store.mark_offers_claimed(
            [(row["offer_id"], inv, commands[i].idempotency_key, commands[i].request_hash) for i, row, inv in to_mint]
        )
        await store.enqueue(events)
        # A refund that arrived before the claim: the invoice is issued for the payment and the refunded
        # part is reversed at once by a red letter (ordered after the ISSUE on the same ledger key).
        for _, row, inv in to_mint:
            if row["refunded_fen"] > 0:
                refunded.add(inv)
                await red_letter.reverse(
                    store,
                    deps,
                    merchant_id=row["merchant_id"],
                    invoice_id=inv,
                    amount_fen=row["refunded_fen"],
                    reason="SALES_RETURN",
                    idempotency_key=f"refund-before-claim:{row['offer_id']}",
                    request_hash=hashlib.sha256(str(row["refunded_fen"]).encode()).digest(),
                    now=now,
                )
    # Fresh invoices are PENDING with nothing reversed yet: answer from memory, not from another query.
    found = {
        n.invoice_id: invoice_pb2.Invoice(
            signed=n.signed, body=n.body, status=invoice_pb2.INVOICE_STATUS_PENDING, reimbursable_fen=n.body.total_fen
        )
        for n in new_invoices
    }
    reread = [o for o in outcomes if isinstance(o, uuid.UUID) and (o not in found or o in refunded)]
    if reread:
        found.update(await store.invoices_by_id(reread))
    return [found[o] if isinstance(o, uuid.UUID) else o for o in outcomes]  # type: ignore[misc]


class ClaimPipeline:
    """Bounded queue of claims served by `workers` group-commit workers of up to `batch_max` claims."""

    def __init__(self, uow: UnitOfWork, deps: MintingDeps) -> None:
        self._uow = uow
        self._deps = deps
        self._queue: asyncio.Queue[ClaimCommand] = asyncio.Queue()
        self.batches = 0
        self.claims = 0

    async def claim(self, cmd: ClaimCommand) -> invoice_pb2.Invoice:
        """Queue a claim and await its invoice; raises the claim's FapiaoError, or OVERLOADED when full."""
        if self._queue.qsize() >= self._deps.settings.claim_queue_max:
            raise ResourceExhausted("OVERLOADED", "too many claims in flight; retry with the same idempotency key")
        cmd.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(cmd)
        return await cmd.future

    async def run(self, stop: asyncio.Event) -> None:
        workers = [asyncio.ensure_future(self._worker(stop)) for _ in range(self._deps.settings.claim_workers)]
        try:
            await stop.wait()
        finally:
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            while not self._queue.empty():
                cmd = self._queue.get_nowait()
                if cmd.future and not cmd.future.done():
                    cmd.future.set_exception(Unavailable("SHUTTING_DOWN", "the service is stopping"))

    async def _worker(self, stop: asyncio.Event) -> None:
        limit = self._deps.settings.claim_batch_max
        while not stop.is_set():
            batch = [await self._queue.get()]
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [c for c in batch if c.future is not None and not c.future.done()]
            if not batch:
                continue
            CLAIM_BATCH_SIZE.observe(len(batch))
            try:
                await self._process(batch)
            except Exception as exc:  # a worker must survive anything, or queued claims would hang
                if unavailable_cause(exc) is None:
                    log.exception("claim worker error")
                else:  # answered UNAVAILABLE; the runtime logs each such call
                    log.debug("claim batch failed: a dependency is unavailable", extra={"error": repr(exc)[:300]})
                for cmd in batch:
                    if cmd.future is not None and not cmd.future.done():
                        cmd.future.set_exception(exc)

    async def _process(self, batch: list[ClaimCommand]) -> None:
        outcomes: list[ClaimOutcome | BaseException]
        try:
            outcomes = list(await self._transact(batch))
        except Exception as exc:
            if len(batch) > 1:
                # Isolate the claim that broke the batch: the others must not fail with it.
                log.warning("claim batch failed; retrying claims one by one", extra={"size": len(batch)})
                for cmd in batch:
                    await self._process([cmd])
                return
            outcomes = [exc]
            if not isinstance(exc, FapiaoError):
                log.exception("claim failed")
        self.batches += 1
        self.claims += len(batch)
        for cmd, outcome in zip(batch, outcomes, strict=True):
            if cmd.future is None or cmd.future.done():
                continue
            if isinstance(outcome, BaseException):
                CLAIMS.labels(outcome=getattr(outcome, "reason", "ERROR")).inc()
                cmd.future.set_exception(outcome)
            else:
                CLAIMS.labels(outcome="OK").inc()
                cmd.future.set_result(outcome)

    async def _transact(self, batch: list[ClaimCommand]) -> list[ClaimOutcome]:
        for attempt in range(1, 4):
            try:
                async with self._uow.transaction() as store:
                    return await mint_claims(store, self._deps, batch, dt.datetime.now(dt.UTC))
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError):
                # UniqueViolation: a concurrent first claim of a new (region, year) counter row.
                if attempt == 3:
                    raise
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("unreachable")
