"""What the reimbursement handlers need from the ledger, as a port with a real and a fake adapter.

The real adapter (ledger_adapter.py) reads invoice state and results from the validators over gRPC,
signs transactions with the service's REIMBURSER key, enqueues them in the caller's PostgreSQL
transaction (transactional outbox), and learns outcomes from ledger.results.v1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import asyncpg
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime.envelope import OutgoingEvent


class LedgerPort(Protocol):
    async def invoice_state(
        self, invoice_number: str, *, state_only: bool = False
    ) -> ledger_service_pb2.GetInvoiceStateResponse | None:
        """Current state and receipts of an invoice (state_only: without receipts, one validator's
        unsigned word), or None when the ledger does not know it."""

    async def transaction_result(self, transaction_id: str) -> ledger_pb2.TransactionResult | None:
        """The final result of a transaction, or None when it is not final (or not known) yet."""

    def transaction_events(self, bodies: Sequence[ledger_pb2.TransactionBody]) -> list[OutgoingEvent]:
        """Sign `bodies` and package them as outbox events (no I/O).

        The caller writes them to its outbox in the statement that records the request
        (`fapiao_runtime.outbox.outbox_source`); nothing reaches the ledger unless that commits.
        """

    async def submit(self, conn: asyncpg.Connection, bodies: Sequence[ledger_pb2.TransactionBody]) -> None:
        """Sign `bodies` and enqueue them for the ledger inside the caller's open transaction on `conn`.

        Nothing reaches the ledger unless that transaction commits; once it commits, delivery is
        guaranteed (at least once; the ledger answers a duplicate transaction id with its first result).
        """

    async def unsubmitted(self, conn: asyncpg.Connection, transaction_ids: Sequence[str]) -> int:
        """How many of `transaction_ids` (committed by `submit`) the ledger's transaction log has not
        accepted yet: still in the outbox because Kafka refuses writes or cannot be reached."""

    async def wait_results(
        self, transactions: Mapping[str, str], timeout_s: float
    ) -> dict[str, ledger_pb2.TransactionResult]:
        """Wait up to `timeout_s` for the final results of `transactions` (transaction id -> invoice id:
        ids are unique per ledger chain); return those that arrived (maybe not all).

        Results that arrived shortly before the call are remembered, so calling this right after the
        submitting transaction commits cannot miss a fast result.
        """
