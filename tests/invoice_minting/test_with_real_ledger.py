"""invoice_minting against the real ledger validators (4 processes, quorum 3): ISSUE, partial red letter
and cancel are committed on the chain and the invoice follows the ledger's outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao_stack.harness import StackUnderTest
from fapiao_stack.keys import ensure_local_keys, load_authority_key, validator_env

from tests.invoice_minting.support import MintingUnderTest, person, uscc

pytestmark = pytest.mark.e2e

VALIDATORS = 4
ST = invoice_pb2


async def test_invoice_lifecycle_on_the_real_ledger(stack: StackUnderTest) -> None:
    run_dir = stack.tmp_path / "run"
    ledger_env = ensure_local_keys(run_dir, VALIDATORS)
    started = await asyncio.gather(
        *(
            stack.start_service("ledger", timeout_s=120, **ledger_env, **validator_env(run_dir, VALIDATORS, i))
            for i in range(1, VALIDATORS + 1)
        ),
        stack.start_service(
            "invoice_minting",
            timeout_s=120,
            FAPIAO_SECRETS_KEY=os.urandom(32).hex(),
            FAPIAO_LEDGER_AUTHORITY_KEY_FILE=ledger_env["FAPIAO_LEDGER_AUTHORITY_KEY_FILE"],
            FAPIAO_LEDGER_AUTHORITY_KEY_ID="authority-1",
        ),
        return_exceptions=True,
    )
    processes = [p for p in started if not isinstance(p, BaseException)]
    try:
        failures = [p for p in started if isinstance(p, BaseException)]
        if failures:
            raise failures[0]
        service = processes[-1]
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        try:
            authority = load_authority_key(Path(ledger_env["FAPIAO_LEDGER_AUTHORITY_KEY_FILE"]))
            minting = MintingUnderTest(
                service, channel, api_grpc.InvoiceMintingServiceStub(channel), authority, producer, stack
            )
            await minting.register_merchant("m1", uscc(21))
            await minting.pay("m1", "P1", 5000)
            token = await minting.token("m1", "P1")
            invoice = (
                await minting.stub.ClaimInvoice(
                    api.ClaimInvoiceRequest(claim_token=token, buyer=person("钱七"), idempotency_key="k")
                )
            ).invoice
            issued = await minting.wait_status(invoice.body.invoice_id, ST.INVOICE_STATUS_ISSUED, timeout_s=90)
            assert issued.ledger_height >= 1 and not issued.rejection_reason

            await minting.refund("m1", "P1", 1200, 1200)
            partial = await minting.wait_status(
                invoice.body.invoice_id, ST.INVOICE_STATUS_PARTIALLY_RED_LETTERED, timeout_s=90
            )
            assert partial.reimbursable_fen == 3800
            done = await minting.stub.RedLetterInvoice(
                api.RedLetterInvoiceRequest(
                    merchant_id="m1",
                    invoice_number=invoice.body.invoice_number,
                    reason="SALES_RETURN",
                    idempotency_key="cancel-rest",
                )
            )
            assert done.red_letter_invoice.body.total_fen == -3800
            cancelled = await minting.wait_status(invoice.body.invoice_id, ST.INVOICE_STATUS_CANCELLED, timeout_s=90)
            assert cancelled.reimbursable_fen == 0 and len(cancelled.red_letter_invoice_numbers) == 2
            for number in cancelled.red_letter_invoice_numbers:
                red = (await minting.stub.GetInvoice(api.GetInvoiceRequest(invoice_number=number))).invoice
                assert red.status == ST.INVOICE_STATUS_ISSUED
        finally:
            await channel.close()
            await producer.stop()
    finally:
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
