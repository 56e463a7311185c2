"""invoice_minting rides out a crashed PostgreSQL (kill -9): it stays up, answers UNAVAILABLE and reports
NOT_SERVING while the database is down, and once it is back serves again by itself and turns the payments
published meanwhile into offers (its consumers resume from their committed offsets)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao_stack.harness import StackUnderTest

from tests.invoice_minting.support import minting_service, uscc
from tests.support.outages import eventually, health, logged, own_postgres, stack_on

pytestmark = pytest.mark.integration

LOST = "background task lost a dependency; retrying with back-off"


async def test_invoice_minting_rides_out_a_killed_postgres_and_makes_the_offers_of_payments_made_meanwhile(
    stack: StackUnderTest,
) -> None:
    async with own_postgres(stack.tmp_path) as postgres, minting_service(stack_on(stack, postgres)) as minting:
        await minting.register_merchant("m-outage", uscc(7))
        await minting.pay("m-outage", "before", 1_000)
        assert (await minting.claim_url("m-outage", "before")).claim_url

        postgres.kill()
        await minting.pay("m-outage", "during", 2_000)  # acknowledged by the broker while the database is down
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await minting.stub.GetClaimOfferByPayment(
                api.GetClaimOfferByPaymentRequest(merchant_id="m-outage", payment_id="before"), timeout=20
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        await eventually(lambda: _health_is(minting.service, "NOT_SERVING"), 30, "NOT_SERVING during the outage")
        await eventually(lambda: logged(minting.service, LOST), 60, "a consumer's outage line")
        await asyncio.sleep(3)  # several rounds of back-off: the process does not exit meanwhile
        assert minting.service.proc.poll() is None, minting.service.log_text()[-3000:]  # type: ignore[attr-defined]

        await asyncio.to_thread(postgres.start)
        await eventually(lambda: _health_is(minting.service, "SERVING"), 60, "SERVING after the heal")
        assert (await minting.claim_url("m-outage", "during", timeout_s=90)).claim_url
        await minting.pay("m-outage", "after", 3_000)
        assert (await minting.claim_url("m-outage", "after")).claim_url
        assert not await logged(minting.service, "unhandled error")


async def _health_is(service: object, status: str) -> bool:
    return await health(service) == status  # type: ignore[arg-type]
