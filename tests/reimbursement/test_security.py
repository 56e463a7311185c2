"""Who may call, and who may act on which invoice: real mutual TLS, real gRPC, real PostgreSQL."""

from __future__ import annotations

import grpc
import pytest
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import reason_of
from fapiao_runtime.pki import issue_service_certificate

from tests.reimbursement.conftest import ApiUnderTest
from tests.reimbursement.support import new_tax_id

pytestmark = pytest.mark.integration


async def _lock_error(api: ApiUnderTest, tax_id: str | None, number: str, **kw: bool) -> grpc.aio.AioRpcError:
    async with api.channel(tax_id, **kw) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(channel).LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="k1"), timeout=5
            )
    return caught.value


async def test_missing_client_certificate_fails_the_handshake(api: ApiUnderTest) -> None:
    number = api.issue(None)
    error = await _lock_error(api, None, number)
    # gRPC reports a handshake the server refused as a transport failure: UNAVAILABLE, before any RPC.
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert not api.ledger.submitted


async def test_certificate_from_another_ca_fails_the_handshake(api: ApiUnderTest) -> None:
    tax_id = new_tax_id()
    await api.add_org(tax_id)
    error = await _lock_error(api, tax_id, api.issue(None), other_ca=True)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert not api.ledger.submitted


async def test_a_service_certificate_from_the_same_ca_is_no_organisation(api: ApiUnderTest) -> None:
    service = issue_service_certificate(api.pki.ca, "gateway")
    credentials = grpc.ssl_channel_credentials(api.pki.ca.cert_pem, service.key_pem, service.cert_pem)
    async with grpc.aio.secure_channel(f"127.0.0.1:{api.port}", credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(channel).LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=api.issue(None), idempotency_key="k1"), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not api.ledger.submitted


async def test_unknown_and_revoked_organisations_are_unauthenticated(api: ApiUnderTest) -> None:
    number = api.issue(None)
    unknown = await _lock_error(api, new_tax_id(), number)
    assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(unknown) == "UNKNOWN_ORGANISATION"
    tax_id = new_tax_id()
    await api.add_org(tax_id)
    async with api.pool.acquire() as conn:
        await conn.execute("UPDATE organisations SET status = 'REVOKED', revoked_at = now() WHERE tax_id = $1", tax_id)
    revoked = await _lock_error(api, tax_id, number)
    assert revoked.code() == grpc.StatusCode.UNAUTHENTICATED and reason_of(revoked) == "ORGANISATION_REVOKED"
    assert not api.ledger.submitted


async def test_company_invoice_can_only_be_locked_by_its_buyer(api: ApiUnderTest) -> None:
    buyer, other = new_tax_id(), new_tax_id()
    await api.add_org(buyer)
    await api.add_org(other)
    number = api.issue(buyer)
    denied = await _lock_error(api, other, number)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and reason_of(denied) == "NOT_INVOICE_BUYER"
    assert not api.ledger.submitted
    async with api.channel(buyer) as channel:
        reply = await api.stub(channel).LockInvoice(
            rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="k1"), timeout=5
        )
    assert reply.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED


async def test_only_the_lock_holder_unlocks_or_closes(api: ApiUnderTest) -> None:
    holder, other = new_tax_id(), new_tax_id()
    await api.add_org(holder)
    await api.add_org(other)
    number = api.issue(None)
    async with api.channel(holder) as ch_holder, api.channel(other) as ch_other:
        await api.stub(ch_holder).LockInvoice(rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="a"))
        for call, request in (
            (api.stub(ch_other).UnlockInvoice, rpb.UnlockInvoiceRequest(invoice_number=number, idempotency_key="b")),
            (api.stub(ch_other).CloseInvoice, rpb.CloseInvoiceRequest(invoice_number=number, idempotency_key="c")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert reason_of(caught.value) == "NOT_LOCK_HOLDER"
            # The message never names the organisation holding the lock.
            assert holder not in (caught.value.details() or "")
        closed = await api.stub(ch_holder).CloseInvoice(
            rpb.CloseInvoiceRequest(invoice_number=number, idempotency_key="d"), timeout=5
        )
    assert closed.outcome.status == rpb.REIMBURSEMENT_STATUS_CLOSED


async def test_bad_input_is_invalid_argument_and_submits_nothing(api: ApiUnderTest) -> None:
    tax_id = new_tax_id()
    await api.add_org(tax_id)
    async with api.channel(tax_id) as channel:
        stub = api.stub(channel)
        for number, key, reason in (
            ("123", "k", "INVALID_INVOICE_NUMBER"),
            (api.issue(None), "", "INVALID_IDEMPOTENCY_KEY"),
            (api.issue(None), "bad key with spaces", "INVALID_IDEMPOTENCY_KEY"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number=number, idempotency_key=key), timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(caught.value) == reason
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number="9" * 20, idempotency_key="k"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND and reason_of(caught.value) == "INVOICE_NOT_FOUND"
    assert not api.ledger.submitted


async def test_a_validator_answering_for_another_invoice_cannot_redirect_a_lock(api: ApiUnderTest) -> None:
    """Reads come from one validator: an answer naming another invoice is refused, nothing is submitted."""
    tax_id = new_tax_id()
    await api.add_org(tax_id)
    asked, other = api.issue(None), api.issue(None)
    api.ledger.by_number[asked] = api.ledger.by_number[other]  # the validator now answers with `other`
    error = await _lock_error(api, tax_id, asked)
    assert error.code() == grpc.StatusCode.UNAVAILABLE and reason_of(error) == "LEDGER_INCONSISTENT"
    assert not api.ledger.submitted


async def _verify(api: ApiUnderTest, tax_id: str, number: str) -> rpb.VerifyInvoiceResponse:
    async with api.channel(tax_id) as channel:
        return await api.stub(channel).VerifyInvoice(
            rpb.VerifyInvoiceRequest(invoice_number=number, issue_date="20261124", total_fen=11_200), timeout=5
        )


async def test_a_status_receipt_about_another_invoice_is_refused_not_ignored(api: ApiUnderTest) -> None:
    """A validator hiding a cancellation behind another invoice's valid receipt: VerifyInvoice must not
    fall back to the ISSUE's status and call the invoice genuine and reimbursable."""
    tax_id = new_tax_id()
    await api.add_org(tax_id)
    asked, other = api.issue(None), api.issue(None)
    api.ledger.cancel(asked)
    asked_id, other_id = api.ledger.by_number[asked], api.ledger.by_number[other]
    api.ledger.last_receipts[asked_id] = api.ledger.last_receipts[other_id]
    reply = await _verify(api, tax_id, asked)
    assert not reply.genuine and reply.problem == "BAD_LEDGER_RECEIPT:STATE_RECEIPT_FOR_ANOTHER_INVOICE"
    assert reply.status == rpb.REIMBURSEMENT_STATUS_UNSPECIFIED


async def test_a_rejected_transaction_is_no_status_receipt(api: ApiUnderTest) -> None:
    """A rejected transaction's result carries the state it was refused in, which may be long gone: a
    validator answering with it (a rival's refused LOCK, for an invoice closed since) is refused."""
    holder, rival = new_tax_id(), new_tax_id()
    await api.add_org(holder)
    await api.add_org(rival)
    number = api.issue(None)
    async with api.channel(holder) as channel, api.channel(rival) as rival_channel:
        stub = api.stub(channel)
        await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="h"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(rival_channel).LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="r"), timeout=5
            )
        assert reason_of(caught.value) == "ALREADY_LOCKED"
        await stub.CloseInvoice(rpb.CloseInvoiceRequest(invoice_number=number, idempotency_key="c"), timeout=5)
    assert (await _verify(api, holder, number)).status == rpb.REIMBURSEMENT_STATUS_CLOSED
    invoice_id = api.ledger.by_number[number]
    [refused] = [
        receipt
        for result, receipt in api.ledger.results.values()
        if result.invoice_id == invoice_id and not result.accepted
    ]
    api.ledger.last_receipts[invoice_id] = refused
    reply = await _verify(api, holder, number)
    assert not reply.genuine and reply.status != rpb.REIMBURSEMENT_STATUS_LOCKED
    assert reply.problem == "BAD_LEDGER_RECEIPT:STATE_RECEIPT_FOR_ANOTHER_INVOICE"
