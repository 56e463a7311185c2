"""VerifyInvoice: genuine, forged, cancelled, tampered receipts, and the anti-enumeration limits."""

from __future__ import annotations

import grpc
import pytest
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import Unavailable, reason_of
from reimbursement.organisations import Organisation
from reimbursement.settings import VerificationSettings
from reimbursement.store import store_registration
from reimbursement.verification import InvoiceVerifier

from tests.reimbursement.conftest import ApiUnderTest
from tests.reimbursement.support import Issuer, new_invoice_number, new_tax_id

pytestmark = pytest.mark.integration


async def _verify(
    api: ApiUnderTest, org: str, number: str, total: int = 11_200, date: str = "20261124"
) -> rpb.VerifyInvoiceResponse:
    async with api.channel(org) as channel:
        return await api.stub(channel).VerifyInvoice(
            rpb.VerifyInvoiceRequest(invoice_number=number, issue_date=date, total_fen=total), timeout=5
        )


async def test_genuine_invoice_with_status_and_amount(api: ApiUnderTest) -> None:
    org = new_tax_id()
    await api.add_org(org)
    number = api.issue(org, total_fen=11_200)
    reply = await _verify(api, org, number)
    assert reply.genuine and not reply.problem
    assert reply.status == rpb.REIMBURSEMENT_STATUS_INIT and reply.reimbursable_fen == 11_200
    assert reply.seller_tax_id == api.issuer.tax_id and reply.checks_remaining_today == 4


async def test_forged_invoice_is_not_genuine(api: ApiUnderTest) -> None:
    org = new_tax_id()
    await api.add_org(org)
    # Valid format, on the ledger, but the issuer signature does not verify.
    forged = api.ledger.issue(api.issuer.invoice(org, forge=True), api.issuer.key).invoice_number
    reply = await _verify(api, org, forged)
    assert not reply.genuine and reply.problem == "BAD_ISSUER_SIGNATURE"
    # Issued by a key the ledger knows but this service has no registration of.
    stranger = Issuer(tax_id=api.issuer.tax_id)
    unregistered = api.ledger.issue(stranger.invoice(org), stranger.key).invoice_number
    reply = await _verify(api, org, unregistered)
    assert not reply.genuine and reply.problem == "UNKNOWN_ISSUER_KEY"
    # A well-formed number the ledger never saw.
    reply = await _verify(api, org, new_invoice_number())
    assert not reply.genuine and reply.problem == "NOT_ON_LEDGER"


async def test_cancelled_invoice_is_reported(api: ApiUnderTest) -> None:
    org = new_tax_id()
    await api.add_org(org)
    number = api.issue(org)
    api.ledger.cancel(number)
    reply = await _verify(api, org, number)
    assert reply.status == rpb.REIMBURSEMENT_STATUS_CANCELLED and reply.reimbursable_fen == 0


async def test_wrong_details_reveal_nothing(api: ApiUnderTest) -> None:
    org = new_tax_id()
    await api.add_org(org)
    number = api.issue(org, total_fen=11_200)
    for total, date in ((11_201, "20261124"), (11_200, "20261123")):
        reply = await _verify(api, org, number, total=total, date=date)
        assert not reply.genuine and reply.problem == "DETAILS_MISMATCH"
        assert not reply.seller_tax_id and reply.status == rpb.REIMBURSEMENT_STATUS_UNSPECIFIED


async def test_receipt_without_quorum_is_not_genuine(api: ApiUnderTest) -> None:
    org = new_tax_id()
    await api.add_org(org)
    number = api.issue(org)
    receipt = api.ledger.issue_receipts[api.ledger.by_number[number]]
    del receipt.signatures[1:]  # one validator's word is not enough
    reply = await _verify(api, org, number)
    assert not reply.genuine and reply.problem == "BAD_LEDGER_RECEIPT:RECEIPT_NO_QUORUM"


async def test_five_checks_per_invoice_per_day(api: ApiUnderTest) -> None:
    org, other = new_tax_id(), new_tax_id()
    await api.add_org(org)
    await api.add_org(other)
    number = api.issue(org)
    for expected_left in (4, 3, 2, 1, 0):
        assert (await _verify(api, org, number)).checks_remaining_today == expected_left
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _verify(api, org, number)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(caught.value) == "DAILY_CHECK_LIMIT"
    # The count is per organisation and invoice.
    assert (await _verify(api, other, number)).genuine


@pytest.mark.parametrize("follower", ["stores it meanwhile", "caught up, no such key", "cannot tell"])
async def test_a_key_not_stored_yet_is_awaited_before_calling_an_invoice_forged(
    api: ApiUnderTest, follower: str
) -> None:
    # The issuer-key follower reads the ledger in fetch windows, and may be far behind after an outage:
    # a fresh issuer's registration may still be on its way when a company checks the first invoice.
    org = new_tax_id()
    await api.add_org(org)
    fresh = Issuer(tax_id=new_tax_id())
    number = api.ledger.issue(fresh.invoice(org), fresh.key).invoice_number
    waited: list[str] = []

    async def caught_up() -> bool:
        waited.append(follower)
        if follower == "stores it meanwhile":
            await store_registration(api.pool, fresh.registration("reg-fresh"))
        return follower != "cannot tell"

    verifier = InvoiceVerifier(
        api.pool, api.ledger, api.ledger.public_keys, None, VerificationSettings(5, 50.0), keys_caught_up=caught_up
    )
    request = rpb.VerifyInvoiceRequest(invoice_number=number, issue_date="20261124", total_fen=11_200)
    caller = Organisation(org, "Company", True)
    if follower == "cannot tell":
        # Not knowing is no verdict: UNAVAILABLE, and the check is not counted against the daily five.
        with pytest.raises(Unavailable) as caught:
            await verifier.verify(caller, request)
        assert caught.value.reason == "ISSUER_KEYS_CATCHING_UP"
        await store_registration(api.pool, fresh.registration("reg-fresh"))
        reply = await verifier.verify(caller, request)
        assert reply.genuine and reply.checks_remaining_today == 4
        return
    reply = await verifier.verify(caller, request)
    assert len(waited) == 1
    assert reply.genuine == (follower == "stores it meanwhile")
    assert reply.problem == ("" if reply.genuine else "UNKNOWN_ISSUER_KEY")
    # A key already stored is never waited for.
    await verifier.verify(caller, request)
    assert len(waited) == (1 if reply.genuine else 2)


async def test_a_verified_invoice_is_locked_without_another_ledger_read(
    api: ApiUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VerifyInvoice's quorum-verified receipt gives the facts LockInvoice is pre-checked against."""
    org = new_tax_id()
    await api.add_org(org)
    verified, unverified = api.issue(org, total_fen=11_200), api.issue(org)
    reads: list[tuple[str, bool]] = []
    read = api.ledger.invoice_state

    async def counted(invoice_number: str, *, state_only: bool = False):  # type: ignore[no-untyped-def]
        reads.append((invoice_number, state_only))
        return await read(invoice_number, state_only=state_only)

    monkeypatch.setattr(api.ledger, "invoice_state", counted)
    assert (await _verify(api, org, verified)).genuine
    async with api.channel(org) as channel:
        stub = api.stub(channel)
        for number in (verified, unverified):
            await stub.LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=number, idempotency_key=f"lock-{number}"), timeout=5
            )
    assert reads == [(verified, False), (unverified, True)]
    assert [api.ledger.states[api.ledger.by_number[n]].lock_holder_tax_id for n in (verified, unverified)] == [org, org]
