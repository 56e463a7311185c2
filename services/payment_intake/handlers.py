"""Use cases of payment_intake, independent of transport: record payments and refunds, read payments.

Entry points (grpc_api, webhook) parse input into domain commands and call these.
"""

from __future__ import annotations

import asyncpg
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import AlreadyExists, NotFound

from payment_intake import store
from payment_intake.batcher import PaymentBatcher
from payment_intake.domain import RecordPayment, RecordRefund, validate_payment, validate_refund
from payment_intake.merchants import MerchantDirectory


class IntakeHandlers:
    def __init__(self, pool: asyncpg.Pool, directory: MerchantDirectory, batcher: PaymentBatcher) -> None:
        self.pool = pool
        self.directory = directory
        self.batcher = batcher

    async def _require_merchant(self, merchant_id: str) -> None:
        if await self.directory.get(merchant_id) is None:
            raise NotFound("UNKNOWN_MERCHANT", "no merchant registered with this merchant_id")

    async def record_payment(self, cmd: RecordPayment) -> store.PaymentOutcome:
        """Validate and record one payment (batched with concurrent calls). Raises FapiaoError."""
        validate_payment(cmd)
        await self._require_merchant(cmd.merchant_id)
        return await self.batcher.submit(cmd)

    async def record_refund(self, cmd: RecordRefund) -> store.RefundOutcome:
        validate_refund(cmd)
        await self._require_merchant(cmd.merchant_id)
        async with self.pool.acquire() as conn, conn.transaction():
            return await store.record_refund(conn, cmd)

    async def get_payment(self, merchant_id: str, transaction_id: str) -> payments_pb2.Payment:
        async with self.pool.acquire() as conn:
            return await store.get_payment(conn, merchant_id, transaction_id)

    async def record_notified_payment(self, cmd: RecordPayment, nonce: str) -> store.PaymentOutcome:
        """Webhook path: the nonce and the payment commit together, or neither does (batched too)."""
        validate_payment(cmd)
        return await self.batcher.submit(cmd, nonce)

    async def record_notified_refund(self, cmd: RecordRefund, nonce: str) -> store.RefundOutcome:
        validate_refund(cmd)
        async with self.pool.acquire() as conn, conn.transaction():
            await _claim(conn, cmd.merchant_id, nonce)
            return await store.record_refund(conn, cmd)


async def _claim(conn: asyncpg.Connection, merchant_id: str, nonce: str) -> None:
    if not await store.claim_nonce(conn, merchant_id, nonce):
        raise AlreadyExists("REPLAYED_NONCE", "this nonce was already used within the replay window")
