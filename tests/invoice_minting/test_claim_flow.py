"""Payment event -> claimable offer -> claimed, signed invoice on the ledger topic -> ISSUED."""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.invoice_ids import invoice_id_for_number
from fapiao_runtime.topics import INVOICES
from fapiao_stack.harness import StackUnderTest, read_envelopes

from tests.invoice_minting.support import company, ledger_stand_in, minting_service, person, uscc, wait_until

pytestmark = pytest.mark.integration


async def test_payment_to_signed_issued_invoice_end_to_end(stack: StackUnderTest) -> None:
    async with minting_service(stack) as minting, ledger_stand_in(minting) as ledger:
        seller_tax_id = uscc(1)
        await minting.register_merchant("m-shop", seller_tax_id, region="44")
        items = [
            payments_pb2.PaymentItem(
                tax_classification_code="3070401000000000000",
                name="咖啡",
                quantity=2,
                unit_price_fen=1850,
                amount_fen=3700,
                tax_rate_bp=600,
            ),
            payments_pb2.PaymentItem(
                tax_classification_code="1030101000000000000",
                name="蛋糕",
                quantity=1,
                unit_price_fen=2999,
                amount_fen=2999,
                tax_rate_bp=1300,
            ),
        ]
        await minting.pay("m-shop", "pay-1", 6699, items)
        by_payment = await minting.claim_url("m-shop", "pay-1")
        assert by_payment.claim_url.startswith("https://fapiao.test/claim/")
        assert by_payment.claim_qr_png.startswith(b"\x89PNG")
        assert "<svg" in by_payment.claim_qr_svg
        token = by_payment.claim_url.rsplit("/", 1)[1]
        assert len(token) >= 22  # >= 128 bits of URL-safe base64

        offer = (await minting.stub.GetClaimOffer(api.GetClaimOfferRequest(claim_token=token))).offer
        assert (offer.merchant_id, offer.amount_fen, offer.claimed) == ("m-shop", 6699, False)
        assert offer.merchant_name == "m-shop 有限公司"
        assert [i.name for i in offer.items] == ["咖啡", "蛋糕"]

        buyer_tax_id = uscc(777, "110105")
        claimed = await minting.stub.ClaimInvoice(
            api.ClaimInvoiceRequest(
                claim_token=token, buyer=company("  北京买方科技有限公司 ", buyer_tax_id), idempotency_key="k1"
            )
        )
        invoice = claimed.invoice
        assert invoice.status == invoice_pb2.INVOICE_STATUS_PENDING
        body = invoice.body
        assert body.buyer.name == "北京买方科技有限公司"
        assert body.seller.tax_id == seller_tax_id
        assert len(body.invoice_number) == 20 and body.invoice_number[2:5] == "442"
        assert body.invoice_number.endswith("1".zfill(15))
        # The only id the ledger accepts for this number: one number, one invoice, one chain.
        assert body.invoice_id == invoice_id_for_number(body.invoice_number)
        assert [(line.total_fen, line.tax_fen, line.amount_fen) for line in body.lines] == [
            (3700, 209, 3491),  # 3700 * 600 / 10600 = 209.43 -> 209
            (2999, 345, 2654),  # 2999 * 1300 / 11300 = 345.02 -> 345
        ]
        assert (body.total_fen, body.total_tax_fen, body.total_amount_fen) == (6699, 554, 6145)
        assert body.verification_qr.startswith(f"01,32,,{body.invoice_number},66.99,{body.issue_date},,")

        # Verify with nothing but the merchant's public key and the shipped bytes.
        keys = (await minting.stub.ListIssuerKeys(api.ListIssuerKeysRequest(merchant_id="m-shop"))).keys
        public = next(k.public_key for k in keys if k.key_id == invoice.signed.signature.key_id)
        Ed25519PublicKey.from_public_bytes(public).verify(invoice.signed.signature.signature, invoice.signed.body)
        assert invoice_pb2.InvoiceBody.FromString(invoice.signed.body) == body

        # The ISSUE went through Kafka, after the key registration on its partition, signed by the issuer key.
        await wait_until(lambda: any(t.type == ledger_pb2.TRANSACTION_TYPE_ISSUE for t in ledger.transactions))
        assert not ledger.problems
        issue = next(t for t in ledger.transactions if t.type == ledger_pb2.TRANSACTION_TYPE_ISSUE)
        assert issue.invoice_id == body.invoice_id
        assert issue.issue.invoice.body == invoice.signed.body
        registered_partitions = [
            p for p, records in ledger.records.items() if any(r.HasField("key_registration") for r in records)
        ]
        assert sorted(registered_partitions) == [0, 1]
        assert ledger.keys[invoice.signed.signature.key_id] == (public, seller_tax_id)

        issued = await minting.wait_status(body.invoice_id, invoice_pb2.INVOICE_STATUS_ISSUED)
        assert issued.signed == invoice.signed
        events = await read_envelopes(stack.kafka_bootstrap, stack.topic(INVOICES.name), expected=1, timeout_s=15)
        assert len(events) == 1
        assert unpack(events[0], invoice_pb2.InvoiceIssued).invoice.body.invoice_number == body.invoice_number

        # Retry with the same key returns the same invoice; the buyer's list has it once.
        again = await minting.stub.ClaimInvoice(
            api.ClaimInvoiceRequest(
                claim_token=token, buyer=company("北京买方科技有限公司", buyer_tax_id), idempotency_key="k1"
            )
        )
        assert again.invoice.body.invoice_number == body.invoice_number
        listed = await minting.stub.ListInvoices(api.ListInvoicesRequest(buyer_tax_id=buyer_tax_id))
        assert [i.body.invoice_number for i in listed.invoices] == [body.invoice_number]
        by_number = await minting.stub.GetInvoice(api.GetInvoiceRequest(invoice_number=body.invoice_number))
        assert by_number.invoice.status == invoice_pb2.INVOICE_STATUS_ISSUED


async def test_key_rotation_keeps_old_invoices_verifiable(stack: StackUnderTest) -> None:
    async with minting_service(stack) as minting, ledger_stand_in(minting) as ledger:
        await minting.register_merchant("m-rot", uscc(2))
        await minting.pay("m-rot", "before", 100)
        await minting.pay("m-rot", "after", 200)
        [old_key] = await minting.wait_merchant_key("m-rot")

        def claim(token: str):  # type: ignore[no-untyped-def]
            return minting.stub.ClaimInvoice(
                api.ClaimInvoiceRequest(claim_token=token, buyer=person(), idempotency_key="k")
            )

        first = (await claim(await minting.token("m-rot", "before"))).invoice
        rotated = (await minting.stub.RotateIssuerKey(api.RotateIssuerKeyRequest(merchant_id="m-rot"))).key
        second = (await claim(await minting.token("m-rot", "after"))).invoice
        assert first.signed.signature.key_id == old_key.key_id
        assert second.signed.signature.key_id == rotated.key_id != old_key.key_id

        keys = {
            k.key_id: k
            for k in (await minting.stub.ListIssuerKeys(api.ListIssuerKeysRequest(merchant_id="m-rot"))).keys
        }
        assert not keys[old_key.key_id].active and keys[old_key.key_id].HasField("retired_at")
        assert keys[rotated.key_id].active
        for invoice in (first, second):
            public = keys[invoice.signed.signature.key_id].public_key
            Ed25519PublicKey.from_public_bytes(public).verify(invoice.signed.signature.signature, invoice.signed.body)
        # Both keys reached the ledger before the invoices they signed; both ISSUEs were accepted.
        await minting.wait_status(second.body.invoice_id, invoice_pb2.INVOICE_STATUS_ISSUED)
        await minting.wait_status(first.body.invoice_id, invoice_pb2.INVOICE_STATUS_ISSUED)
        assert {old_key.key_id, rotated.key_id} <= set(ledger.keys) and not ledger.problems
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await minting.stub.RotateIssuerKey(api.RotateIssuerKeyRequest(merchant_id="nobody"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_tax_id_change_gets_a_new_key_and_old_invoices_are_red_lettered_with_the_old_one(
    stack: StackUnderTest,
) -> None:
    async with minting_service(stack) as minting, ledger_stand_in(minting) as ledger:
        await minting.register_merchant("m-move", uscc(3))
        await minting.pay("m-move", "old", 800)
        await minting.pay("m-move", "new", 900)
        old = (
            await minting.stub.ClaimInvoice(
                api.ClaimInvoiceRequest(
                    claim_token=await minting.token("m-move", "old"), buyer=person(), idempotency_key="k"
                )
            )
        ).invoice
        await minting.wait_status(old.body.invoice_id, invoice_pb2.INVOICE_STATUS_ISSUED)
        await minting.register_merchant("m-move", uscc(4), wait=False)
        await wait_until(lambda: len(ledger.keys) == 2)
        new = (
            await minting.stub.ClaimInvoice(
                api.ClaimInvoiceRequest(
                    claim_token=await minting.token("m-move", "new"), buyer=person(), idempotency_key="k"
                )
            )
        ).invoice
        assert new.body.seller.tax_id == uscc(4) and new.signed.signature.key_id != old.signed.signature.key_id
        await minting.refund("m-move", "old", 800, 800)
        await minting.wait_status(old.body.invoice_id, invoice_pb2.INVOICE_STATUS_CANCELLED)
        cancel = next(t for t in ledger.transactions if t.type == ledger_pb2.TRANSACTION_TYPE_CANCEL)
        red = invoice_pb2.InvoiceBody.FromString(cancel.cancel.red_letter_invoice.body)
        assert red.seller.tax_id == uscc(3)
        assert cancel.cancel.red_letter_invoice.signature.key_id == old.signed.signature.key_id
        await minting.wait_status(new.body.invoice_id, invoice_pb2.INVOICE_STATUS_ISSUED)
        assert not ledger.problems


async def test_waiting_for_an_offer_returns_when_the_payment_arrives(stack: StackUnderTest) -> None:
    import asyncio
    import time

    async with minting_service(stack) as minting:
        await minting.register_merchant("m-wait", uscc(31), region="44")

        def wait_call(payment_id: str, wait_ms: int) -> asyncio.Future[api.GetClaimOfferByPaymentResponse]:
            request = api.GetClaimOfferByPaymentRequest(
                merchant_id="m-wait", payment_id=payment_id, omit_qr_code=True, wait_ms=wait_ms
            )
            return asyncio.ensure_future(minting.stub.GetClaimOfferByPayment(request, timeout=30))

        # Ten concurrent callers wait before the payment event is even published.
        waiting = [wait_call("pay-w1", 20_000) for _ in range(10)]
        await asyncio.sleep(0.5)
        assert not any(call.done() for call in waiting)
        await minting.pay("m-wait", "pay-w1", 1234)
        answers = await asyncio.gather(*waiting)
        assert {a.offer.amount_fen for a in answers} == {1234}
        assert len({a.claim_url for a in answers}) == 1

        # Nothing arrives: NOT_FOUND once the wait is over, not before.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await wait_call("pay-never", 700)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert time.monotonic() - started >= 0.6


async def test_secrets_key_rotation_reseals_issuer_keys_and_claim_tokens(stack: StackUnderTest) -> None:
    import os
    import subprocess
    import sys

    old_key, new_key = os.urandom(32).hex(), os.urandom(32).hex()
    async with minting_service(stack, FAPIAO_SECRETS_KEY=old_key) as minting:
        await minting.register_merchant("m-rotate", uscc(41), region="44")
        await minting.pay("m-rotate", "pay-r1", 2500)
        before = await minting.claim_url("m-rotate", "pay-r1", omit_qr_code=True)

    env = {
        **stack.env(),
        "FAPIAO_SECRETS_KEY": new_key,
        "FAPIAO_SECRETS_KEY_PREVIOUS": old_key,
        "FAPIAO_DB_SCHEMA": "invoice_minting",
    }
    done = subprocess.run(
        [sys.executable, "-m", "invoice_minting.secrets_box", "reseal"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert '"issuer_keys.private_key_sealed": 1' in done.stdout and '"claim_offers.token_sealed": 1' in done.stdout

    # The old key is gone: the new one alone opens the claim token and the issuer's private key.
    async with minting_service(stack, FAPIAO_SECRETS_KEY=new_key) as minting:
        after = await minting.claim_url("m-rotate", "pay-r1", omit_qr_code=True)
        assert after.claim_url == before.claim_url
        token = after.claim_url.rsplit("/", 1)[1]
        claimed = await minting.stub.ClaimInvoice(
            api.ClaimInvoiceRequest(claim_token=token, buyer=person(), idempotency_key="rotate-1")
        )
        assert claimed.invoice.body.total_fen == 2500
