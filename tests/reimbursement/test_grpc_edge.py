"""ReimbursementService under hostile requests: undecodable bytes, an idempotency key with a trailing
newline, digits that are not ASCII, forged page tokens. Real mutual TLS, real gRPC, real PostgreSQL."""

from __future__ import annotations

import base64
import struct

import grpc
import pytest
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import InvalidArgument
from reimbursement.handlers import ReimbursementHandlers

from tests.reimbursement.conftest import ApiUnderTest
from tests.reimbursement.support import new_tax_id

pytestmark = pytest.mark.integration

SERVICE = "fapiao.reimbursement.v1.ReimbursementService"


def _reason(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("fapiao-reason", "")  # type: ignore[arg-type, return-value]


async def _registered(api: ApiUnderTest) -> str:
    tax_id = new_tax_id()
    await api.add_org(tax_id)
    return tax_id


async def test_undecodable_bytes_are_malformed_request(api: ApiUnderTest) -> None:
    async with api.channel(await _registered(api)) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/LockInvoice", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\x0a\x05ab", timeout=5)
    assert (caught.value.code(), _reason(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
    assert not api.ledger.submitted


async def test_an_idempotency_key_of_128_characters_and_a_newline_is_invalid_argument(api: ApiUnderTest) -> None:
    number = api.issue(None)
    async with api.channel(await _registered(api)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(channel).LockInvoice(
                rpb.LockInvoiceRequest(invoice_number=number, idempotency_key="k" * 128 + "\n"), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not api.ledger.submitted
    async with api.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM reimbursement_requests") == 0


@pytest.mark.parametrize(
    ("numbers", "key", "reason"),
    [
        (["26440000000000000001"], "k" * 128 + "\n", "INVALID_IDEMPOTENCY_KEY"),
        (["26440000000000000001\n"], "k1", "INVALID_INVOICE_NUMBER"),
        (["٢" * 20], "k1", "INVALID_INVOICE_NUMBER"),  # Arabic-Indic digits, which \d would take
    ],
)
async def test_the_handlers_patterns_match_whole_ascii_strings(
    api: ApiUnderTest, numbers: list[str], key: str, reason: str
) -> None:
    """The handlers hold the rule themselves, whatever edge calls them: refused before anything is read."""
    handlers = ReimbursementHandlers(api.pool, api.ledger)
    for operation in ("LOCK", "BATCH_CLOSE"):
        with pytest.raises(InvalidArgument) as caught:
            await handlers.execute(new_tax_id(), operation, numbers, key, None)
        assert caught.value.reason == reason
    with pytest.raises(InvalidArgument) as caught:
        await handlers.execute(new_tax_id(), "LOCK_ALL", ["26440000000000000001"], "k1", None)
    assert caught.value.reason == "UNKNOWN_OPERATION"
    assert not api.ledger.submitted


@pytest.mark.parametrize(
    ("number", "issue_date"),
    [("２" * 20, "20261124"), ("26440000000000000001", "２０２６１１２４")],  # full-width digits
)
async def test_verification_takes_ascii_digits_only(api: ApiUnderTest, number: str, issue_date: str) -> None:
    async with api.channel(await _registered(api)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(channel).VerifyInvoice(
                rpb.VerifyInvoiceRequest(invoice_number=number, issue_date=issue_date, total_fen=100), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(caught.value) in ("INVALID_INVOICE_NUMBER", "INVALID_ISSUE_DATE")
    async with api.pool.acquire() as conn:  # nothing counted against the daily checks
        assert await conn.fetchval("SELECT count(*) FROM verification_checks") == 0


def _cursor(request_id: int, position: int) -> str:
    return base64.urlsafe_b64encode(struct.pack(">qi", request_id, position)).decode()


@pytest.mark.parametrize(
    "page_token",
    [_cursor(-1, 0), _cursor(5, -1), _cursor(-(2**63), -(2**31)), "not-a-token", _cursor(1, 0)[:-4]],
)
async def test_a_page_token_not_returned_by_the_api_is_invalid(api: ApiUnderTest, page_token: str) -> None:
    async with api.channel(await _registered(api)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.stub(channel).ListReimbursements(rpb.ListReimbursementsRequest(page_token=page_token), timeout=5)
    assert (caught.value.code(), _reason(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_the_largest_cursor_is_a_valid_empty_page(api: ApiUnderTest) -> None:
    async with api.channel(await _registered(api)) as channel:
        reply = await api.stub(channel).ListReimbursements(
            rpb.ListReimbursementsRequest(page_token=_cursor(2**63 - 1, 2**31 - 1)), timeout=5
        )
    assert list(reply.reimbursements) == [] and reply.next_page_token == ""
