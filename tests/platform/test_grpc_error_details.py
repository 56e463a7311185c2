"""Every error answer of the runtime's gRPC server carries the standard rich status: a google.rpc.ErrorInfo
(reason, domain, metadata) on every error, a google.rpc.RetryInfo on UNAVAILABLE, decodable by grpcio-status,
next to the details string and the `fapiao-reason` trailer clients already read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao_runtime.errors import ERROR_DOMAIN, RETRY_AFTER_S, FailedPrecondition, Unavailable, error_info, reason_of
from fapiao_runtime.grpc_server import GrpcServer
from google.rpc import error_details_pb2
from grpc_status import rpc_status

pytestmark = pytest.mark.unit

SERVICE = "fapiao.payments.v1.PaymentIntakeService"
METHOD = f"/{SERVICE}/GetPayment"


class _Servicer(service_grpc.PaymentIntakeServiceServicer):
    """GetPayment fails as its merchant id asks."""

    async def GetPayment(
        self, request: service_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetPaymentResponse:
        if request.merchant_id == "locked":
            raise FailedPrecondition("ALREADY_LOCKED", "locked by another organisation", metadata={"invoice": "1"})
        if request.merchant_id == "busy":
            raise Unavailable("VALIDATORS_BUSY", "no validator answered")
        if request.merchant_id == "db-down":
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        raise RuntimeError("secret internals")


@pytest.fixture
async def stub() -> AsyncIterator[service_grpc.PaymentIntakeServiceStub]:
    server = GrpcServer([SERVICE])
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, _Servicer())
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield service_grpc.PaymentIntakeServiceStub(channel)
    finally:
        await server.stop(0)


async def _fail(stub: service_grpc.PaymentIntakeServiceStub, merchant_id: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetPayment(service_pb2.GetPaymentRequest(merchant_id=merchant_id), timeout=5)
    return caught.value


def _details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo | None]:
    status = rpc_status.from_call(error)  # raises when the rich status disagrees with the call's code or details
    assert status is not None
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    found_info = any(d.Unpack(info) for d in status.details)
    found_retry = any(d.Unpack(retry) for d in status.details)
    assert found_info
    return info, retry if found_retry else None


async def test_a_fapiao_error_carries_error_info_with_its_reason_and_metadata(
    stub: service_grpc.PaymentIntakeServiceStub,
) -> None:
    error = await _fail(stub, "locked")
    info, retry = _details(error)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (info.reason, info.domain) == ("ALREADY_LOCKED", ERROR_DOMAIN)
    assert info.metadata["method"] == METHOD and info.metadata["invoice"] == "1" and "service" in info.metadata
    assert retry is None
    # What clients read today is unchanged.
    assert reason_of(error) == "ALREADY_LOCKED"
    assert ("fapiao-reason", "ALREADY_LOCKED") in tuple(error.trailing_metadata() or ())
    assert error_info(error) == info


async def test_a_lost_dependency_carries_retry_info(stub: service_grpc.PaymentIntakeServiceStub) -> None:
    error = await _fail(stub, "db-down")
    info, retry = _details(error)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert info.reason == "DATABASE_UNAVAILABLE" and info.metadata["dependency"] == "database"
    assert retry is not None and retry.retry_delay.seconds == RETRY_AFTER_S


async def test_an_unavailable_fapiao_error_carries_retry_info_too(stub: service_grpc.PaymentIntakeServiceStub) -> None:
    info, retry = _details(await _fail(stub, "busy"))
    assert info.reason == "VALIDATORS_BUSY" and retry is not None


async def test_an_internal_error_carries_error_info_without_its_text(
    stub: service_grpc.PaymentIntakeServiceStub,
) -> None:
    error = await _fail(stub, "other")
    info, retry = _details(error)
    assert error.code() == grpc.StatusCode.INTERNAL and info.reason == "INTERNAL" and retry is None
    assert "secret" not in str(error.trailing_metadata()) and "secret" not in (error.details() or "")
