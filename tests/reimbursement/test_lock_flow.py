"""Lock / unlock / close with idempotency keys, deadlines and batches (fake ledger, real everything else)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import reason_of
from reimbursement.pending_resolver import resolve_pending_once, undo_failed_batches

from tests.reimbursement.conftest import ApiUnderTest
from tests.reimbursement.support import new_tax_id

pytestmark = pytest.mark.integration


async def _org(api: ApiUnderTest) -> str:
    tax_id = new_tax_id()
    await api.add_org(tax_id)
    return tax_id


async def test_retry_with_same_key_returns_first_outcome_and_submits_once(api: ApiUnderTest) -> None:
    org = await _org(api)
    number = api.issue(org)
    async with api.channel(org) as channel:
        stub = api.stub(channel)
        request = rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="lock-1")
        first = await stub.LockInvoice(request, timeout=5)
        again = await stub.LockInvoice(request, timeout=5)
    assert first.outcome == again.outcome
    assert first.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED and not first.outcome.pending
    assert len(api.ledger.submitted) == 1


async def test_same_key_different_content_is_a_conflict(api: ApiUnderTest) -> None:
    org = await _org(api)
    first, second = api.issue(org), api.issue(org)
    async with api.channel(org) as channel:
        stub = api.stub(channel)
        await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number=first, idempotency_key="k"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number=second, idempotency_key="k"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert reason_of(caught.value) == "IDEMPOTENCY_CONFLICT"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UnlockInvoice(rpb.UnlockInvoiceRequest(invoice_number=first, idempotency_key="k"), timeout=5)
        assert reason_of(caught.value) == "IDEMPOTENCY_CONFLICT"
    assert len(api.ledger.submitted) == 1


async def test_deadline_before_outcome_then_retry_returns_real_outcome(api: ApiUnderTest) -> None:
    org = await _org(api)
    number = api.issue(org)
    api.ledger.paused.clear()  # the ledger has not decided yet when the client gives up
    async with api.channel(org) as channel:
        stub = api.stub(channel)
        request = rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="slow")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LockInvoice(request, timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        api.ledger.paused.set()
        retried = await stub.LockInvoice(request, timeout=5)
    assert retried.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED
    assert len(api.ledger.submitted) == 1, "the retry reused the first transaction id"
    assert retried.outcome.transaction_id == api.ledger.submitted[0].transaction_id


async def test_a_lock_while_the_ledger_log_refuses_writes_is_unavailable_and_kept(api: ApiUnderTest) -> None:
    org = await _org(api)
    number = api.issue(org)
    api.ledger.log_down = True  # Kafka below its in-sync replicas: the outbox cannot deliver
    async with api.channel(org) as channel:
        stub = api.stub(channel)
        request = rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="log-down")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LockInvoice(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(caught.value) == "LEDGER_LOG_UNAVAILABLE"
        api.ledger.log_down = False
        retried = await stub.LockInvoice(request, timeout=10)
    assert retried.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED
    assert len(api.ledger.submitted) == 1, "the request was kept and submitted once"


async def test_concurrent_lockers_one_winner_others_already_locked(api: ApiUnderTest) -> None:
    orgs = [await _org(api) for _ in range(6)]
    number = api.issue(None)  # personal invoice: any registered organisation may try
    channels = [api.channel(o) for o in orgs]
    try:

        async def attempt(i: int) -> str:
            try:
                reply = await api.stub(channels[i]).LockInvoice(
                    rpb.LockInvoiceRequest(invoice_number=number, idempotency_key=f"k{i}"), timeout=5
                )
                return "WON" if reply.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED else "?"
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                return reason_of(exc)

        outcomes = await asyncio.gather(*(attempt(i) for i in range(len(orgs))))
    finally:
        for channel in channels:
            await channel.close()
    assert sorted(outcomes) == ["ALREADY_LOCKED"] * 5 + ["WON"]


async def test_closed_invoice_is_already_reimbursed_and_cancelled_is_reported(api: ApiUnderTest) -> None:
    org, other = await _org(api), await _org(api)
    number, cancelled = api.issue(None), api.issue(None)
    api.ledger.cancel(cancelled)
    async with api.channel(org) as ch, api.channel(other) as ch_other:
        stub = api.stub(ch)
        await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="l"), timeout=5)
        await stub.CloseInvoice(rpb.CloseInvoiceRequest(invoice_number=number, idempotency_key="c"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(ch_other).LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="l2"), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(caught.value) == "ALREADY_REIMBURSED"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number=cancelled, idempotency_key="l3"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(caught.value) == "CANCELLED"


async def test_batch_lock_is_all_or_nothing(api: ApiUnderTest) -> None:
    org, rival = await _org(api), await _org(api)
    numbers = [api.issue(None) for _ in range(4)]
    async with api.channel(org) as ch, api.channel(rival) as ch_rival:
        await api.stub(ch_rival).LockInvoice(
            rpb.LockInvoiceRequest(invoice_number=numbers[2], idempotency_key="r"), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(ch).BatchLockInvoices(
                rpb.BatchLockInvoicesRequest(invoice_numbers=numbers, idempotency_key="batch"), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(caught.value) == "ALREADY_LOCKED"
        # The locks the batch won were undone: nothing of the batch remains locked by `org`.
        for number in numbers:
            state = (await api.ledger.invoice_state(number)).state  # type: ignore[union-attr]
            assert state.lock_holder_tax_id != org
        # Retrying the failed batch returns the same failure and submits nothing new.
        submitted = len(api.ledger.submitted)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await api.stub(ch).BatchLockInvoices(
                rpb.BatchLockInvoicesRequest(invoice_numbers=numbers, idempotency_key="batch"), timeout=5
            )
        assert reason_of(again.value) == "ALREADY_LOCKED" and len(api.ledger.submitted) == submitted
        free = [n for n in numbers if n != numbers[2]]
        locked = await api.stub(ch).BatchLockInvoices(
            rpb.BatchLockInvoicesRequest(invoice_numbers=free, idempotency_key="batch-2"), timeout=5
        )
        assert [o.status for o in locked.outcomes] == [rpb.REIMBURSEMENT_STATUS_LOCKED] * 3
        closed = await api.stub(ch).BatchCloseInvoices(
            rpb.BatchCloseInvoicesRequest(invoice_numbers=free, idempotency_key="close-all"), timeout=5
        )
        assert [o.status for o in closed.outcomes] == [rpb.REIMBURSEMENT_STATUS_CLOSED] * 3
        # A batch close including an invoice the caller does not hold is refused before anything is submitted.
        submitted = len(api.ledger.submitted)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(ch).BatchCloseInvoices(
                rpb.BatchCloseInvoicesRequest(invoice_numbers=[numbers[2]], idempotency_key="close-x"), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert len(api.ledger.submitted) == submitted


async def test_a_failed_batch_lock_is_undone_when_nobody_waits_for_it(api: ApiUnderTest) -> None:
    """The caller gives up before the ledger decides and never retries: the pending resolver records the
    outcomes and, the batch having failed, unlocks what it won (once, however often it runs)."""
    org, rival = await _org(api), await _org(api)
    numbers = [api.issue(None) for _ in range(3)]
    async with api.channel(org) as ch, api.channel(rival) as ch_rival:
        await api.stub(ch_rival).LockInvoice(
            rpb.LockInvoiceRequest(invoice_number=numbers[1], idempotency_key="r"), timeout=5
        )
        api.ledger.paused.clear()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(ch).BatchLockInvoices(
                rpb.BatchLockInvoicesRequest(invoice_numbers=numbers, idempotency_key="gone"), timeout=0.5
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    api.ledger.paused.set()
    await asyncio.sleep(0.1)  # the ledger decides: two locks won, one ALREADY_LOCKED
    won = [n for n in numbers if (await api.ledger.invoice_state(n)).state.lock_holder_tax_id == org]  # type: ignore[union-attr]
    assert won == [numbers[0], numbers[2]]
    assert await resolve_pending_once(api.pool, api.ledger, older_than_s=0, batch=100) == 3
    await asyncio.sleep(0.1)  # the compensating UNLOCKs are decided
    holders = [(await api.ledger.invoice_state(n)).state.lock_holder_tax_id for n in numbers]  # type: ignore[union-attr]
    assert holders == ["", rival, ""]
    submitted = len(api.ledger.submitted)
    assert await undo_failed_batches(api.pool, api.ledger, None) == 0  # the start-up sweep finds nothing left
    assert len(api.ledger.submitted) == submitted


async def test_batch_close_waits_for_the_callers_own_undecided_unlock(api: ApiUnderTest) -> None:
    """An UNLOCK that timed out is still on its way to the ledger: a batch close naming that invoice
    would close the others and fail on it, and a CLOSE cannot be undone. It is refused before anything
    is submitted, and after the UNLOCK is accepted it is NOT_LOCKED even if a validator lags."""
    org = await _org(api)
    x, y = api.issue(org), api.issue(org)
    async with api.channel(org) as ch:
        stub = api.stub(ch)
        for i, number in enumerate((x, y)):
            await stub.LockInvoice(rpb.LockInvoiceRequest(invoice_number=number, idempotency_key=f"l{i}"), timeout=5)
        api.ledger.paused.clear()
        unlock = rpb.UnlockInvoiceRequest(invoice_number=x, idempotency_key="u")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UnlockInvoice(unlock, timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        submitted = len(api.ledger.submitted)
        close = rpb.BatchCloseInvoicesRequest(invoice_numbers=[x, y], idempotency_key="c")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.BatchCloseInvoices(close, timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(caught.value) == "EARLIER_REQUEST_PENDING"
        assert len(api.ledger.submitted) == submitted
        api.ledger.paused.set()
        assert (await stub.UnlockInvoice(unlock, timeout=5)).outcome.status == rpb.REIMBURSEMENT_STATUS_INIT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.BatchCloseInvoices(
                rpb.BatchCloseInvoicesRequest(invoice_numbers=[x, y], idempotency_key="c2"), timeout=5
            )
        assert reason_of(caught.value) == "NOT_LOCKED" and len(api.ledger.submitted) == submitted
        still = (await api.ledger.invoice_state(y)).state  # type: ignore[union-attr]
        assert still.status == ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED


async def test_concurrent_deliveries_of_one_batch_close_all_get_its_outcome(api: ApiUnderTest) -> None:
    """The request racing the first with the same key is its retry, not an earlier pending request."""
    org = await _org(api)
    numbers = [api.issue(org) for _ in range(2)]
    async with api.channel(org) as ch:
        stub = api.stub(ch)
        await stub.BatchLockInvoices(rpb.BatchLockInvoicesRequest(invoice_numbers=numbers, idempotency_key="l"))
        close = rpb.BatchCloseInvoicesRequest(invoice_numbers=numbers, idempotency_key="c")
        replies = await asyncio.gather(*(stub.BatchCloseInvoices(close, timeout=5) for _ in range(4)))
    assert all([o.status for o in r.outcomes] == [rpb.REIMBURSEMENT_STATUS_CLOSED] * 2 for r in replies)
    assert sum(1 for body in api.ledger.submitted if body.WhichOneof("action") == "close") == 2


async def test_a_request_whose_checks_lose_the_race_to_its_twin_returns_the_twins_outcome(
    api: ApiUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second delivery of a BatchClose reads the ledger for its checks only after the first closed the
    invoices (a loaded machine): the checks now fail (already closed), but the request is the first one's
    retry. The interleaving is forced at the ledger port, where the checks read each invoice's state."""
    org = await _org(api)
    numbers = [api.issue(org) for _ in range(2)]
    first_done = asyncio.Event()
    second_arrived = asyncio.Event()
    reads = 0
    read = api.ledger.invoice_state

    async def late_second(invoice_number: str, *, state_only: bool = False):  # type: ignore[no-untyped-def]
        # The first delivery's reads (one per invoice, issued together) wait until the second's have
        # begun, however slowly it arrives; the second's go on only once the first has answered.
        nonlocal reads
        reads += 1
        if reads <= len(numbers):
            await asyncio.wait_for(second_arrived.wait(), timeout=30)
        else:
            second_arrived.set()
            await first_done.wait()
        return await read(invoice_number, state_only=state_only)

    async with api.channel(org) as ch:
        stub = api.stub(ch)
        await stub.BatchLockInvoices(rpb.BatchLockInvoicesRequest(invoice_numbers=numbers, idempotency_key="l"))
        monkeypatch.setattr(api.ledger, "invoice_state", late_second)
        close = rpb.BatchCloseInvoicesRequest(invoice_numbers=numbers, idempotency_key="c")
        deliveries = [asyncio.ensure_future(stub.BatchCloseInvoices(close, timeout=40)) for _ in range(2)]
        await asyncio.wait(deliveries, return_when=asyncio.FIRST_COMPLETED)
        first_done.set()
        replies = await asyncio.gather(*deliveries)
    assert reads == 2 * len(numbers)
    assert [[o.status for o in r.outcomes] for r in replies] == [[rpb.REIMBURSEMENT_STATUS_CLOSED] * 2] * 2
    assert sum(1 for body in api.ledger.submitted if body.WhichOneof("action") == "close") == len(numbers)


async def test_a_batch_close_cut_short_by_a_cancellation_says_what_was_closed(api: ApiUnderTest) -> None:
    """The issuer cancels one invoice between the batch's check and the ledger's decision: the other is
    closed (a CLOSE cannot be undone), and the error says so instead of "not applied"."""
    org = await _org(api)
    numbers = [api.issue(org) for _ in range(2)]
    async with api.channel(org) as ch:
        stub = api.stub(ch)
        await stub.BatchLockInvoices(rpb.BatchLockInvoicesRequest(invoice_numbers=numbers, idempotency_key="l"))
        api.ledger.paused.clear()
        close = asyncio.ensure_future(
            stub.BatchCloseInvoices(
                rpb.BatchCloseInvoicesRequest(invoice_numbers=numbers, idempotency_key="c"), timeout=5
            )
        )
        while sum(1 for body in api.ledger.submitted if body.WhichOneof("action") == "close") < 2:
            await asyncio.sleep(0.01)  # checked and submitted, not decided yet
        api.ledger.cancel(numbers[1])
        api.ledger.paused.set()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await close
    assert reason_of(caught.value) == "CANCELLED"
    assert "batch partly applied: 1 of 2 invoices closed" in (caught.value.details() or "")
    closed = (await api.ledger.invoice_state(numbers[0])).state  # type: ignore[union-attr]
    assert closed.status == ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED


async def test_list_reimbursements_shows_only_the_callers_pages(api: ApiUnderTest) -> None:
    org, other = await _org(api), await _org(api)
    numbers = [api.issue(org) for _ in range(5)]
    async with api.channel(org) as ch, api.channel(other) as ch_other:
        for i, number in enumerate(numbers):
            await api.stub(ch).LockInvoice(rpb.LockInvoiceRequest(invoice_number=number, idempotency_key=f"l{i}"))
        seen: list[str] = []
        token = ""
        for _ in range(5):
            page = await api.stub(ch).ListReimbursements(rpb.ListReimbursementsRequest(page_size=2, page_token=token))
            seen += [o.invoice_number for o in page.reimbursements]
            assert all(o.action == rpb.REIMBURSEMENT_ACTION_LOCK for o in page.reimbursements)
            token = page.next_page_token
            if not token:
                break
        assert seen == numbers
        assert not (await api.stub(ch_other).ListReimbursements(rpb.ListReimbursementsRequest())).reimbursements
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(ch).ListReimbursements(rpb.ListReimbursementsRequest(page_token="!!"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
