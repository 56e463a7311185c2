"""An in-memory ledger implementing LedgerPort for tests that do not need real validators.

It runs the same invoice state machine rules the validators enforce (first LOCK wins, only the holder
unlocks or closes, CLOSED and CANCELLED are final, a repeated transaction id gets its first result)
and produces receipts signed by its own validator keys, so the service's receipt checks run for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Mapping, Sequence

import asyncpg
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime import merkle
from fapiao_runtime.envelope import OutgoingEvent
from fapiao_runtime.ledger_client import SigningKey, sign_transaction, transaction_event

S = ledger_pb2


class FakeLedger:
    def __init__(self, validators: int = 4) -> None:
        self.validator_keys = [SigningKey.generate(f"validator-{i}") for i in range(1, validators + 1)]
        self.submitter = SigningKey.generate("fake-submitter")
        self.states: dict[str, ledger_pb2.InvoiceState] = {}  # by invoice id
        self.by_number: dict[str, str] = {}
        self.issue_receipts: dict[str, ledger_pb2.Receipt] = {}
        self.last_receipts: dict[str, ledger_pb2.Receipt] = {}
        self.results: dict[str, tuple[ledger_pb2.TransactionResult, ledger_pb2.Receipt]] = {}
        self.submitted: list[ledger_pb2.TransactionBody] = []
        self.height = 0
        # Seconds between submission and the ledger deciding; `paused` holds decisions until released.
        self.delay_s = 0.005
        self.paused = asyncio.Event()
        self.paused.set()
        self._events: dict[str, asyncio.Event] = {}
        self._prepared: dict[str, ledger_pb2.TransactionBody] = {}  # events handed out, not yet awaited

    @property
    def public_keys(self) -> dict[str, object]:
        return {k.key_id: k.public_key for k in self.validator_keys}

    # -- test setup --------------------------------------------------------------------------------

    def issue(self, signed: invoice_pb2.SignedInvoice) -> ledger_pb2.InvoiceState:
        body = invoice_pb2.InvoiceBody.FromString(signed.body)
        tx = S.TransactionBody(
            transaction_id=str(uuid.uuid4()), type=S.TRANSACTION_TYPE_ISSUE, invoice_id=body.invoice_id
        )
        tx.issue.invoice.CopyFrom(signed)
        state = S.InvoiceState(
            invoice_id=body.invoice_id,
            invoice_number=body.invoice_number,
            status=S.INVOICE_LEDGER_STATUS_ISSUED,
            total_fen=body.total_fen,
            reimbursable_fen=body.total_fen,
            buyer_tax_id=body.buyer.tax_id,
            seller_tax_id=body.seller.tax_id,
            issue_date=body.issue_date,
        )
        self.states[body.invoice_id] = state
        self.by_number[body.invoice_number] = body.invoice_id
        _result, receipt = self._commit(tx, True, "", state)
        self.issue_receipts[body.invoice_id] = receipt
        return state

    def cancel(self, invoice_number: str) -> None:
        invoice_id = self.by_number[invoice_number]
        state = self.states[invoice_id]
        state.status = S.INVOICE_LEDGER_STATUS_CANCELLED
        state.reimbursable_fen = 0
        tx = S.TransactionBody(transaction_id=str(uuid.uuid4()), type=S.TRANSACTION_TYPE_CANCEL, invoice_id=invoice_id)
        tx.cancel.reason = "SALES_RETURN"
        self._commit(tx, True, "", state)

    # -- LedgerPort ------------------------------------------------------------------------------

    async def invoice_state(
        self, invoice_number: str, *, state_only: bool = False
    ) -> ledger_service_pb2.GetInvoiceStateResponse | None:
        invoice_id = self.by_number.get(invoice_number)
        if invoice_id is None:
            return None
        reply = ledger_service_pb2.GetInvoiceStateResponse(state=self.states[invoice_id])
        if state_only:
            return reply
        reply.issue_receipt.CopyFrom(self.issue_receipts[invoice_id])
        reply.receipt.CopyFrom(self.last_receipts[invoice_id])
        return reply

    async def transaction_result(self, transaction_id: str) -> ledger_pb2.TransactionResult | None:
        self._submit_prepared([transaction_id])
        found = self.results.get(transaction_id)
        return None if found is None else found[0]

    def transaction_events(self, bodies: Sequence[ledger_pb2.TransactionBody]) -> list[OutgoingEvent]:
        """Events the service writes with its request. The fake cannot see that write commit, so it
        takes a transaction as submitted when its outcome is first awaited: the service awaits right
        after committing, and never awaits the transactions of a request it failed to record."""
        events = []
        for body in bodies:
            copy = S.TransactionBody()
            copy.CopyFrom(body)
            self._prepared[body.transaction_id] = copy
            events.append(transaction_event(sign_transaction(copy, self.submitter), copy.invoice_id, "fake"))
        return events

    def _submit_prepared(self, transaction_ids: Sequence[str]) -> None:
        for tx_id in transaction_ids:
            body = self._prepared.pop(tx_id, None)
            if body is not None:
                self._schedule(body)

    def _schedule(self, body: ledger_pb2.TransactionBody) -> None:
        self.submitted.append(body)
        self._events.setdefault(body.transaction_id, asyncio.Event())
        asyncio.get_running_loop().create_task(self._decide_later(body))

    async def submit(self, conn: asyncpg.Connection, bodies: Sequence[ledger_pb2.TransactionBody]) -> None:
        assert conn.is_in_transaction(), "submission must happen inside the caller's transaction"
        for body in bodies:
            copy = S.TransactionBody()
            copy.CopyFrom(body)
            self._schedule(copy)

    async def wait_results(
        self, transactions: Mapping[str, str], timeout_s: float
    ) -> dict[str, ledger_pb2.TransactionResult]:
        transaction_ids = list(transactions)
        self._submit_prepared(transaction_ids)

        async def one(tx_id: str) -> None:
            await self._events.setdefault(tx_id, asyncio.Event()).wait()

        pending = [asyncio.ensure_future(one(t)) for t in transaction_ids]
        if pending and timeout_s > 0:
            await asyncio.wait(pending, timeout=timeout_s)
        for task in pending:
            task.cancel()
        return {t: self.results[t][0] for t in transaction_ids if t in self.results}

    # -- the state machine ------------------------------------------------------------------------

    async def _decide_later(self, body: ledger_pb2.TransactionBody) -> None:
        await asyncio.sleep(self.delay_s)
        await self.paused.wait()
        self.apply(body)

    def apply(self, body: ledger_pb2.TransactionBody) -> ledger_pb2.TransactionResult:
        if body.transaction_id in self.results:
            return self.results[body.transaction_id][0]
        state = self.states.get(body.invoice_id)
        if state is None:
            result, _ = self._commit(body, False, "UNKNOWN_INVOICE", S.InvoiceState(invoice_id=body.invoice_id))
            return result
        kind = body.WhichOneof("action")
        org = getattr(body, kind).organisation_tax_id if kind in ("lock", "unlock", "close") else ""
        reason = self._reject_reason(state, kind, org)
        if not reason:
            if kind == "lock":
                state.status, state.lock_holder_tax_id = S.INVOICE_LEDGER_STATUS_LOCKED, org
            elif kind == "unlock":
                state.status, state.lock_holder_tax_id = S.INVOICE_LEDGER_STATUS_ISSUED, ""
            elif kind == "close":
                state.status = S.INVOICE_LEDGER_STATUS_CLOSED
        result, _ = self._commit(body, not reason, reason, state)
        return result

    @staticmethod
    def _reject_reason(state: ledger_pb2.InvoiceState, kind: str | None, org: str) -> str:
        status = state.status
        if status == S.INVOICE_LEDGER_STATUS_CANCELLED:
            return "CANCELLED"
        if status == S.INVOICE_LEDGER_STATUS_CLOSED:
            return "ALREADY_CLOSED"
        if kind == "lock":
            return "ALREADY_LOCKED" if status == S.INVOICE_LEDGER_STATUS_LOCKED else ""
        if status != S.INVOICE_LEDGER_STATUS_LOCKED:
            return "NOT_LOCKED"
        return "" if state.lock_holder_tax_id == org else "NOT_LOCK_HOLDER"

    def _commit(
        self, body: ledger_pb2.TransactionBody, accepted: bool, reason: str, state: ledger_pb2.InvoiceState
    ) -> tuple[ledger_pb2.TransactionResult, ledger_pb2.Receipt]:
        """Put the transaction alone in a new block signed by every fake validator."""
        raw = body.SerializeToString(deterministic=True)
        signed = S.SignedTransaction(body=raw, signature=self.submitter.sign(raw)).SerializeToString()
        self.height += 1
        snapshot = S.InvoiceState()
        snapshot.CopyFrom(state)
        result = S.TransactionResult(
            transaction_id=body.transaction_id,
            invoice_id=body.invoice_id,
            type=body.type,
            accepted=accepted,
            rejection_reason=reason,
            chain_id=0,
            height=self.height,
            index=0,
            state=snapshot,
        )
        result_bytes = result.SerializeToString(deterministic=True)
        header = S.BlockHeader(
            chain_id=0,
            height=self.height,
            transactions_root=merkle.root([signed]),
            results_root=merkle.root([result_bytes]),
            transaction_count=1,
        ).SerializeToString(deterministic=True)
        digest = hashlib.sha256(header).digest()
        receipt = S.Receipt(transaction=signed, result=result_bytes, index=0, tree_size=1, header=header)
        for key in self.validator_keys:
            receipt.signatures.append(
                S.BlockSignature(
                    chain_id=0,
                    height=self.height,
                    header_hash=digest,
                    validator_id=key.key_id,
                    signature=key.sign(header),
                )
            )
        self.results[body.transaction_id] = (result, receipt)
        if accepted:
            self.last_receipts[body.invoice_id] = receipt
        event = self._events.setdefault(body.transaction_id, asyncio.Event())
        event.set()
        return result, receipt
