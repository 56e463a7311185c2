"""An in-memory ledger implementing LedgerPort for tests that do not need real validators.

Every transaction is decided by the validators' own pure code (`ledger.state_machine.execute`: first
LOCK wins, only the holder unlocks or closes, CLOSED and CANCELLED are final, submitters must hold a
key an authority registered, a repeated transaction id gets its first result), on one chain, and each
decision gets a receipt signed by the fake's validator keys, so the service's receipt checks run for real.
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
from fapiao_runtime.ledger_client import SigningKey, sign_key_registration, sign_transaction, transaction_event
from ledger import state_machine

S = ledger_pb2


class FakeLedger:
    def __init__(self, validators: int = 4) -> None:
        self.validator_keys = [SigningKey.generate(f"validator-{i}") for i in range(1, validators + 1)]
        self.authority = SigningKey.generate("fake-authority")
        self.submitter = SigningKey.generate("fake-submitter")
        self.keys: dict[str, state_machine.SubmitterKey] = {}
        self._registration_ids: set[str] = set()
        self.states: dict[str, ledger_pb2.InvoiceState] = {}  # by invoice id
        self.by_number: dict[str, str] = {}
        self.issuers: dict[str, SigningKey] = {}  # by invoice id: the key that issued it
        self.issue_receipts: dict[str, ledger_pb2.Receipt] = {}
        self.last_receipts: dict[str, ledger_pb2.Receipt] = {}
        self.results: dict[str, tuple[ledger_pb2.TransactionResult, ledger_pb2.Receipt]] = {}
        self.submitted: list[ledger_pb2.TransactionBody] = []
        self.height = 0
        # Seconds between submission and the ledger deciding; `paused` holds decisions until released.
        self.delay_s = 0.005
        self.paused = asyncio.Event()
        self.paused.set()
        # While set, the transaction log refuses writes: what is submitted waits, undelivered.
        self.log_down = False
        self._events: dict[str, asyncio.Event] = {}
        self._prepared: dict[str, ledger_pb2.TransactionBody] = {}  # events handed out, not yet awaited
        self.register(self.submitter, S.SUBMITTER_ROLE_REIMBURSER, "reimbursement")

    @property
    def public_keys(self) -> dict[str, object]:
        return {k.key_id: k.public_key for k in self.validator_keys}

    # -- the chain's view, as state_machine.execute reads it ----------------------------------------

    def key(self, key_id: str) -> state_machine.SubmitterKey | None:
        return self.keys.get(key_id)

    def invoice(self, invoice_id: str) -> ledger_pb2.InvoiceState | None:
        return self.states.get(invoice_id)

    def seen(self, transaction_id: str) -> bool:
        return transaction_id in self.results

    # -- test setup --------------------------------------------------------------------------------

    def register(self, key: SigningKey, role: S.SubmitterRole.ValueType, subject: str) -> None:
        """Register `key` on the ledger, as the registry authority does."""
        registration = S.KeyRegistration(
            key_id=key.key_id,
            public_key=key.public_raw,
            role=role,
            subject=subject,
            registration_id=str(uuid.uuid4()),
        )
        signed = sign_key_registration(self.authority, registration)
        state_machine.register_key(
            self.keys, self._registration_ids, {self.authority.key_id: self.authority.public_key}, signed
        )

    def issue(self, signed: invoice_pb2.SignedInvoice, issuer: SigningKey) -> ledger_pb2.InvoiceState:
        """Issue `signed` with an ISSUE signed by `issuer`, registered for the seller on the ledger first
        if it is not yet (what reimbursement's own copy of the registrations holds is the test's choice)."""
        body = invoice_pb2.InvoiceBody.FromString(signed.body)
        if issuer.key_id not in self.keys:
            self.register(issuer, S.SUBMITTER_ROLE_ISSUER, body.seller.tax_id)
        tx = S.TransactionBody(
            transaction_id=str(uuid.uuid4()), type=S.TRANSACTION_TYPE_ISSUE, invoice_id=body.invoice_id
        )
        tx.issue.invoice.CopyFrom(signed)
        result, receipt = self._decide(tx, issuer)
        assert result.accepted, result.rejection_reason
        self.by_number[body.invoice_number] = body.invoice_id
        self.issuers[body.invoice_id] = issuer
        self.issue_receipts[body.invoice_id] = receipt
        return self.states[body.invoice_id]

    def cancel(self, invoice_number: str) -> None:
        """The issuer cancels the invoice (a full red letter)."""
        invoice_id = self.by_number[invoice_number]
        tx = S.TransactionBody(transaction_id=str(uuid.uuid4()), type=S.TRANSACTION_TYPE_CANCEL, invoice_id=invoice_id)
        tx.cancel.reason = "SALES_RETURN"
        result, _ = self._decide(tx, self.issuers[invoice_id])
        assert result.accepted, result.rejection_reason

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

    async def unsubmitted(self, conn: asyncpg.Connection, transaction_ids: Sequence[str]) -> int:
        return len(transaction_ids) if self.log_down else 0

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

    # -- deciding ---------------------------------------------------------------------------------

    async def _decide_later(self, body: ledger_pb2.TransactionBody) -> None:
        await asyncio.sleep(self.delay_s)
        await self.paused.wait()
        while self.log_down:
            await asyncio.sleep(0.01)
        self.apply(body)

    def apply(self, body: ledger_pb2.TransactionBody) -> ledger_pb2.TransactionResult:
        """Decide a transaction the service submitted (signed with its REIMBURSER key)."""
        if body.transaction_id in self.results:
            return self.results[body.transaction_id][0]
        result, _ = self._decide(body, self.submitter)
        return result

    def _decide(
        self, body: ledger_pb2.TransactionBody, signer: SigningKey
    ) -> tuple[ledger_pb2.TransactionResult, ledger_pb2.Receipt]:
        signed = sign_transaction(body, signer)
        outcome = state_machine.execute(
            state_machine.parse_transaction(signed),
            body.invoice_id,
            self,
            chain_id=0,
            chains=1,
            height=self.height + 1,
            index=0,
            offset=self.height,
        )
        if outcome.new_state is not None:
            self.states[body.invoice_id] = outcome.new_state
        return self._commit(signed, outcome.result)

    def _commit(
        self, signed_tx: ledger_pb2.SignedTransaction, result: ledger_pb2.TransactionResult
    ) -> tuple[ledger_pb2.TransactionResult, ledger_pb2.Receipt]:
        """Put the transaction alone in a new block signed by every fake validator."""
        signed = signed_tx.SerializeToString()
        self.height += 1
        assert result.height == self.height
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
        self.results[result.transaction_id] = (result, receipt)
        if result.accepted:
            self.last_receipts[result.invoice_id] = receipt
        self._events.setdefault(result.transaction_id, asyncio.Event()).set()
        return result, receipt
