"""The real ledger port: validators over gRPC for reads, the outbox for writes, the results topic for outcomes."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence

import asyncpg
import grpc
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime.envelope import OutgoingEvent
from fapiao_runtime.errors import DeadlineExceeded, Unavailable
from fapiao_runtime.ledger_client import (
    FAILOVER_CODES,
    LedgerResultWaiter,
    NoValidatorAnswered,
    SigningKey,
    ValidatorClient,
    key_registration_events,
    sign_transaction,
    transaction_event,
)
from fapiao_runtime.ledger_trust import PublicKeys, ReceiptInvalid, verify_receipt
from fapiao_runtime.outbox import enqueue, unsent
from fapiao_runtime.topics import LEDGER_TRANSACTIONS

log = logging.getLogger(__name__)

# A validator that answers INTERNAL is faulty: another one is asked, as for one that is down or stopping.
_FAILOVER = FAILOVER_CODES | {grpc.StatusCode.INTERNAL}


class ValidatorLedger:
    """LedgerPort against real validators.

    Reads go to one validator at a time (`ValidatorClient`: rotating, failing over when one is down,
    stopping, slow or faulty, each call bounded by `call_timeout_s`); results read back from a validator
    are trusted only with a receipt that verifies against the validators' keys and quorum.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        signing_key: SigningKey,
        waiter: LedgerResultWaiter,
        validator_keys: PublicKeys,
        quorum: int | None,
        *,
        producer_name: str = "reimbursement",
        call_timeout_s: float = 2.0,
    ) -> None:
        self._validators = ValidatorClient(endpoints, call_timeout_s)
        self._key = signing_key
        self._waiter = waiter
        self._validator_keys = validator_keys
        self._quorum = quorum
        self._producer = producer_name

    async def close(self) -> None:
        await self._validators.close()

    async def _call(self, method: str, request: object) -> object | None:
        """Call `method` on validators in turn until one answers; None for NOT_FOUND / not final yet.
        Unavailable(LEDGER_UNAVAILABLE) when none answered."""
        try:
            reply: object = await self._validators.call(method, request, failover=_FAILOVER)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                return None
            raise
        except NoValidatorAnswered as exc:
            log.warning("no validator answered", extra={"method": method, "codes": str(exc)})
            raise Unavailable("LEDGER_UNAVAILABLE", "no ledger validator answered; retry later") from None
        return reply

    async def invoice_state(
        self, invoice_number: str, *, state_only: bool = False
    ) -> ledger_service_pb2.GetInvoiceStateResponse | None:
        reply = await self._call(
            "GetInvoiceState",
            ledger_service_pb2.GetInvoiceStateRequest(invoice_number=invoice_number, state_only=state_only),
        )
        if reply is None:
            return None
        assert isinstance(reply, ledger_service_pb2.GetInvoiceStateResponse)
        return reply if reply.state.invoice_id else None

    async def transaction_result(self, transaction_id: str) -> ledger_pb2.TransactionResult | None:
        reply = await self._call(
            "GetTransactionResult", ledger_service_pb2.GetTransactionResultRequest(transaction_id=transaction_id)
        )
        if reply is None:
            return None
        assert isinstance(reply, ledger_service_pb2.GetTransactionResultResponse)
        if not reply.HasField("receipt"):
            return None  # not final yet
        try:
            return verify_receipt(reply.receipt, self._validator_keys, self._quorum)
        except ReceiptInvalid:
            log.warning("validator returned a receipt that does not verify", extra={"transaction_id": transaction_id})
            return None

    def transaction_events(self, bodies: Sequence[ledger_pb2.TransactionBody]) -> list[OutgoingEvent]:
        return [transaction_event(sign_transaction(b, self._key), b.invoice_id, self._producer) for b in bodies]

    async def submit(self, conn: asyncpg.Connection, bodies: Sequence[ledger_pb2.TransactionBody]) -> None:
        await enqueue(conn, self.transaction_events(bodies))

    async def unsubmitted(self, conn: asyncpg.Connection, transaction_ids: Sequence[str]) -> int:
        return await unsent(conn, transaction_ids)  # a transaction's event id is its transaction id

    async def wait_results(
        self, transactions: Mapping[str, str], timeout_s: float
    ) -> dict[str, ledger_pb2.TransactionResult]:
        async def one(tx_id: str, invoice_id: str) -> ledger_pb2.TransactionResult | None:
            try:
                return await self._waiter.wait(tx_id, timeout_s, invoice_id)
            except DeadlineExceeded:
                return None

        found = await asyncio.gather(*(one(t, i) for t, i in transactions.items()))
        return {t: r for t, r in zip(transactions, found, strict=True) if r is not None}


async def register_submitter_key(
    pool: asyncpg.Pool, authority: SigningKey, key: SigningKey, producer_name: str = "reimbursement"
) -> None:
    """Enqueue this service's REIMBURSER key registration (signed by the authority) for every partition.

    The registration id is derived from the key, so re-registering on every start is a no-op for the
    ledger; it is enqueued before any transaction this process signs, so each chain sees it first.
    """
    registration = ledger_pb2.KeyRegistration(
        key_id=key.key_id,
        public_key=key.public_raw,
        role=ledger_pb2.SUBMITTER_ROLE_REIMBURSER,
        subject=producer_name,
        registration_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"fapiao:reimburser:{key.key_id}:{key.public_raw.hex()}")),
    )
    events = key_registration_events(authority, registration, LEDGER_TRANSACTIONS.partitions, producer_name)
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, events)
