"""Ledger results arrive on several partitions (keyed by transaction id), so a red letter's result can
overtake its invoice's ISSUE result. The final state must not depend on that order."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.ledger_client import result_event_id
from fapiao_runtime.vocabulary import claim_token_hash
from fapiao_stack.harness import StackUnderTest
from invoice_minting import red_letter
from invoice_minting.claims import ClaimCommand, mint_claims
from invoice_minting.events import on_result, on_results
from invoice_minting.handlers import create_offer
from invoice_minting.store import MintingStore

from tests.invoice_minting.support import MIGRATIONS, direct_deps, register_direct_merchant

pytestmark = pytest.mark.integration


def _result(transaction_id: uuid.UUID, tx_type: int, accepted: bool, height: int):  # type: ignore[no-untyped-def]
    result = ledger_pb2.TransactionResult(
        transaction_id=str(transaction_id),
        type=tx_type,
        accepted=accepted,
        height=height,
        chain_id=1,
        rejection_reason="" if accepted else "AMOUNT_EXCEEDED",
    )
    return make_envelope(
        result, aggregate_id=str(transaction_id), producer="ledger", event_id=result_event_id(str(transaction_id))
    )


@pytest.mark.parametrize("batched", [False, True], ids=["one_by_one", "one_batch"])
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (1, 0, 2, 3), (2, 1, 0, 3), (1, 2, 3, 0)])
async def test_result_order_does_not_change_the_final_state(
    stack: StackUnderTest, order: tuple[int, ...], batched: bool
) -> None:
    deps = direct_deps()
    pool = await create_pool(stack.database_url, "invoice_minting")
    try:
        await apply_migrations(pool, "invoice_minting", MIGRATIONS)
        now = dt.datetime.now(dt.UTC)
        buyer = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三")
        async with pool.acquire() as conn:
            async with conn.transaction():
                await register_direct_merchant(conn, deps, "m1")
                token = await create_offer(
                    MintingStore(conn), payments_pb2.Payment(payment_id="p", merchant_id="m1", amount_fen=900), deps
                )
                [invoice] = await mint_claims(
                    MintingStore(conn), deps, [ClaimCommand(claim_token_hash(token or ""), buyer, "k")], now
                )
                assert isinstance(invoice, invoice_pb2.Invoice)
                partial, _ = await red_letter.reverse(
                    MintingStore(conn),
                    deps,
                    merchant_id="m1",
                    invoice_id=uuid.UUID(invoice.body.invoice_id),
                    amount_fen=300,
                    reason="SALES_DISCOUNT",
                    idempotency_key="r1",
                    request_hash=b"1",
                    now=now,
                )
                cancel, _ = await red_letter.reverse(
                    MintingStore(conn),
                    deps,
                    merchant_id="m1",
                    invoice_id=uuid.UUID(invoice.body.invoice_id),
                    amount_fen=0,
                    reason="SALES_RETURN",
                    idempotency_key="r2",
                    request_hash=b"2",
                    now=now,
                )
            txs = {
                r["type"]: r["transaction_id"]
                for r in await conn.fetch("SELECT type, transaction_id FROM ledger_transactions")
            }
            # The partial red letter is rejected, the cancel accepted; results arrive in the given order.
            results = [
                _result(
                    txs[ledger_pb2.TRANSACTION_TYPE_PARTIAL_RED_LETTER],
                    ledger_pb2.TRANSACTION_TYPE_PARTIAL_RED_LETTER,
                    False,
                    2,
                ),
                _result(txs[ledger_pb2.TRANSACTION_TYPE_CANCEL], ledger_pb2.TRANSACTION_TYPE_CANCEL, True, 3),
                _result(txs[ledger_pb2.TRANSACTION_TYPE_ISSUE], ledger_pb2.TRANSACTION_TYPE_ISSUE, True, 1),
                _result(
                    txs[ledger_pb2.TRANSACTION_TYPE_ISSUE], ledger_pb2.TRANSACTION_TYPE_ISSUE, False, 1
                ),  # late copy
            ]
            # First of all, a rejection of an unverified record carrying the ISSUE's id (anyone able to
            # write to the ledger topic can make one): published under its own event id, it decides nothing.
            forged = ledger_pb2.TransactionResult(
                transaction_id=str(txs[ledger_pb2.TRANSACTION_TYPE_ISSUE]),
                type=ledger_pb2.TRANSACTION_TYPE_ISSUE,
                rejection_reason="BAD_SIGNATURE",
            )
            sequence = [make_envelope(forged, aggregate_id=forged.transaction_id, producer="ledger")]
            sequence += [results[k] for k in order]
            if batched:  # as the consumer applies records fetched together
                async with conn.transaction():
                    await on_results(conn, sequence, "test")
            else:
                for envelope in sequence:
                    async with conn.transaction():
                        await on_result(conn, envelope, "test")
            original = await MintingStore(conn).invoice_by_id(uuid.UUID(invoice.body.invoice_id))
            assert original is not None
            assert original.status == invoice_pb2.INVOICE_STATUS_CANCELLED
            assert original.ledger_height == 1 and original.reimbursable_fen == 0
            rejected = await MintingStore(conn).invoice_by_id(uuid.UUID(partial.body.invoice_id))
            assert rejected is not None
            assert (rejected.status, rejected.rejection_reason) == (
                invoice_pb2.INVOICE_STATUS_REJECTED,
                "AMOUNT_EXCEEDED",
            )
            accepted = await MintingStore(conn).invoice_by_id(uuid.UUID(cancel.body.invoice_id))
            assert accepted is not None
            assert accepted.status == invoice_pb2.INVOICE_STATUS_ISSUED
            # Only the accepted ISSUE announces the invoice.
            assert await conn.fetchval("SELECT count(*) FROM outbox WHERE topic = 'invoices.v1'") == 1
    finally:
        await pool.close()
