"""InvoiceMintingService under hostile requests: undecodable bytes, NUL in a lookup, forged page tokens,
tokens with a trailing newline, requests a handler refuses. The real servicer and handlers behind the runtime's
GrpcServer; no database is reached."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao_runtime.errors import InvalidArgument, NotFound
from fapiao_runtime.grpc_server import GrpcServer
from invoice_minting.grpc_api import SERVICE_NAME, InvoiceMintingServicer
from invoice_minting.handlers import MintingHandlers
from invoice_minting.store import UnitOfWork

pytestmark = pytest.mark.unit


class _NoDatabase:
    """A pool no request of these tests may reach."""

    def acquire(self) -> Any:
        raise AssertionError("the request reached the database")


def _servicer() -> InvoiceMintingServicer:
    return InvoiceMintingServicer(MintingHandlers(UnitOfWork(_NoDatabase()), None, None))  # type: ignore[arg-type]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = GrpcServer([SERVICE_NAME])
    server.add_servicer(api_grpc.add_InvoiceMintingServiceServicer_to_server, _servicer())
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


def _reason(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("fapiao-reason", "")  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("raw", "reason"), [(b"\x0a\x05ab", "MALFORMED_REQUEST"), (b"\x0a\x02\xff\xfe", "INVALID_CHARACTERS")]
)
async def test_undecodable_requests_are_refused_by_the_runtime_policy(
    channel: grpc.aio.Channel, raw: bytes, reason: str
) -> None:
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/GetClaimOffer", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(raw)
    assert (caught.value.code(), _reason(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


@pytest.mark.parametrize(
    "request_",
    [
        api.GetInvoiceRequest(invoice_number="26440000000000000001\x00"),
        api.ListInvoicesRequest(merchant_id="1230000109\x00"),
        api.GetClaimOfferByPaymentRequest(merchant_id="1230000109", payment_id="p\x00"),
        api.ListIssuerKeysRequest(merchant_id="\x00"),
    ],
    ids=lambda r: type(r).__name__,
)
async def test_a_nul_never_reaches_the_database(channel: grpc.aio.Channel, request_: Any) -> None:
    stub = api_grpc.InvoiceMintingServiceStub(channel)
    method = getattr(stub, type(request_).__name__.removesuffix("Request"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_)
    assert (caught.value.code(), _reason(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS")


def _token(text: str | bytes) -> str:
    return base64.urlsafe_b64encode(text.encode() if isinstance(text, str) else text).decode()


class _EmptyTable:
    """A pool whose every table is empty."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        yield self

    async def fetch(self, *args: Any) -> list[Any]:
        return []


def _handlers() -> MintingHandlers:
    return MintingHandlers(UnitOfWork(_EmptyTable()), None, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "page_token",
    [
        _token("v1:9223372036854775808"),  # one past the largest bigint
        _token("v1:99999999999999999999"),
        _token("v1:-1"),
        _token("v1:+5"),
        _token("v1: 5"),
        _token("v1:5_0"),  # int() would read 50
        _token("v1:٥"),  # an Arabic-Indic five, which int() reads too
        _token("v2:5"),
        _token(b"\xff\xfe"),
        "%%%",
        "djE6",  # "v1:" without a number
    ],
)
async def test_a_page_token_not_issued_by_the_service_is_invalid(page_token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await _handlers().list_invoices(merchant_id="1230000109", page_token=page_token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_the_largest_page_token_is_accepted() -> None:
    found = await _handlers().list_invoices(merchant_id="m", page_token=_token("v1:9223372036854775807"))
    assert found == ([], "")


async def test_a_claim_token_with_a_trailing_newline_is_unknown_without_a_lookup() -> None:
    with pytest.raises(NotFound) as caught:
        await _servicer().GetClaimOffer(api.GetClaimOfferRequest(claim_token="A" * 22 + "\n"), None)
    assert caught.value.reason == "UNKNOWN_TOKEN"


@pytest.mark.parametrize(
    ("request_", "code", "reason"),
    [
        (api.GetInvoiceRequest(), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_LOOKUP"),
        (api.GetInvoiceRequest(invoice_id="not-a-uuid"), grpc.StatusCode.NOT_FOUND, "INVOICE_NOT_FOUND"),
        (api.ListInvoicesRequest(), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FILTER"),
        (
            api.ListInvoicesRequest(merchant_id="m", page_size=201),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_SIZE",
        ),
        (
            api.RedLetterInvoiceRequest(merchant_id="m", idempotency_key="key-1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "MISSING_FIELD",
        ),
        (api.GetClaimOfferRequest(claim_token="short"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_TOKEN"),
    ],
    ids=[
        "MISSING_LOOKUP",
        "INVOICE_NOT_FOUND",
        "MISSING_FILTER",
        "INVALID_PAGE_SIZE",
        "MISSING_FIELD",
        "UNKNOWN_TOKEN",
    ],
)
async def test_requests_a_handler_refuses_never_reach_the_database(
    channel: grpc.aio.Channel, request_: Any, code: grpc.StatusCode, reason: str
) -> None:
    stub = api_grpc.InvoiceMintingServiceStub(channel)
    method = getattr(stub, type(request_).__name__.removesuffix("Request"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_)
    assert (caught.value.code(), _reason(caught.value)) == (code, reason)
