"""Every invalid claim is rejected with a precise status and reason, and changes nothing."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc
import pytest
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import reason_of
from fapiao_stack.harness import StackUnderTest

from tests.invoice_minting.support import company, minting_service, person, uscc

pytestmark = pytest.mark.integration

CLAIM_METHOD = "/fapiao.invoicing.v1.InvoiceMintingService/ClaimInvoice"


async def _rejection(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), reason_of(info.value)


async def test_invalid_claims_are_rejected_precisely_and_change_nothing(stack: StackUnderTest) -> None:
    async with minting_service(stack) as minting:
        await minting.register_merchant("m1", uscc(5))
        await minting.pay("m1", "p-ok", 500)
        # Items that do not add up to the payment: the event is refused (dead-lettered), no offer exists.
        bad_items = [
            payments_pb2.PaymentItem(
                tax_classification_code="1", name="x", quantity=2, unit_price_fen=100, amount_fen=200, tax_rate_bp=600
            )
        ]
        await minting.pay("m1", "p-mismatch", 999, bad_items)
        token = await minting.token("m1", "p-ok")
        stub = minting.stub
        conn = await asyncpg.connect(stack.database_url)
        try:

            def claim(buyer: invoice_pb2.Party, tok: str = token, key: str = "k"):  # type: ignore[no-untyped-def]
                return stub.ClaimInvoice(api.ClaimInvoiceRequest(claim_token=tok, buyer=buyer, idempotency_key=key))

            bad_check = uscc(42)[:-1] + ("0" if uscc(42)[-1] != "0" else "1")
            invalid = grpc.StatusCode.INVALID_ARGUMENT
            cases = {
                "invalid tax id": (claim(company("某公司", bad_check)), (invalid, "INVALID_TAX_ID")),
                "company without tax id": (claim(company("某公司", "")), (invalid, "INVALID_TAX_ID")),
                "name too long": (claim(person("张" * 101)), (invalid, "NAME_TOO_LONG")),
                "control character": (claim(person("张\x07三")), (invalid, "INVALID_CHARACTERS")),
                "bidi override": (claim(person("张\u202e三")), (invalid, "INVALID_CHARACTERS")),
                "empty name": (claim(person("   ")), (invalid, "NAME_REQUIRED")),
                "no buyer kind": (claim(invoice_pb2.Party(name="x")), (invalid, "INVALID_BUYER_KIND")),
                "no idempotency key": (claim(person(), key=""), (invalid, "IDEMPOTENCY_KEY_REQUIRED")),
                "unknown token": (
                    claim(person(), tok="A" * 43),
                    (grpc.StatusCode.NOT_FOUND, "UNKNOWN_TOKEN"),
                ),
                "malformed token": (claim(person(), tok="../etc"), (grpc.StatusCode.NOT_FOUND, "UNKNOWN_TOKEN")),
            }
            for name, (call, expected) in cases.items():
                assert await _rejection(call) == expected, name

            # Bytes that are not UTF-8 in a string field: sent raw, since a client library would refuse them.
            good = api.ClaimInvoiceRequest(claim_token=token, buyer=person("Zhang"), idempotency_key="k")
            raw = good.SerializeToString().replace(b"Zhang", b"Zh\xffng")
            call = minting.channel.unary_unary(CLAIM_METHOD, request_serializer=None, response_deserializer=None)
            assert await _rejection(call(raw)) == (invalid, "INVALID_CHARACTERS")

            # Nothing changed: no invoice, no number consumed, the offer still claimable.
            assert await conn.fetchval("SELECT count(*) FROM invoice_minting.invoices") == 0
            assert await conn.fetchval("SELECT count(*) FROM invoice_minting.invoice_counters") == 0

            first = await claim(person("王五"), key="first")
            assert first.invoice.body.invoice_number.endswith("000000000000001")
            already = claim(person("王五"), key="second")
            assert await _rejection(already) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_CLAIMED")
            conflict = claim(person("别人"), key="first")
            assert await _rejection(conflict) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_CONFLICT")

            deadline = time.monotonic() + 20
            while not await conn.fetchval("SELECT count(*) FROM invoice_minting.dead_letters"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            dead = await conn.fetchval("SELECT error FROM invoice_minting.dead_letters")
            assert dead.startswith("AMOUNT_MISMATCH")
            assert not await conn.fetchval(
                "SELECT count(*) FROM invoice_minting.claim_offers WHERE payment_id = 'p-mismatch'"
            )
        finally:
            await conn.close()


async def test_expired_token_is_rejected(stack: StackUnderTest) -> None:
    async with minting_service(stack, FAPIAO_CLAIM_OFFER_TTL_S="2") as minting:
        await minting.register_merchant("m1", uscc(6))
        await minting.pay("m1", "p1", 700)
        token = await minting.token("m1", "p1")
        deadline = time.monotonic() + 30
        while True:  # the offer lives 2 s from its creation
            try:
                await minting.stub.GetClaimOffer(api.GetClaimOfferRequest(claim_token=token))
            except grpc.aio.AioRpcError as exc:
                assert (exc.code(), reason_of(exc)) == (grpc.StatusCode.FAILED_PRECONDITION, "TOKEN_EXPIRED")
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        claim = minting.stub.ClaimInvoice(
            api.ClaimInvoiceRequest(claim_token=token, buyer=person(), idempotency_key="k")
        )
        assert await _rejection(claim) == (grpc.StatusCode.FAILED_PRECONDITION, "TOKEN_EXPIRED")
