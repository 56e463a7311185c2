"""The runtime's gRPC server wraps every registered method: request ids, FapiaoError mapping, hidden internals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.logs import request_id_var
from fapiao_stack.services import grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.unit

SERVICE = "fapiao.payments.v1.PaymentIntakeService"


class _Servicer(service_grpc.PaymentIntakeServiceServicer):
    """RecordPayment echoes the request id it sees; GetPayment fails as its merchant id asks."""

    async def RecordPayment(
        self, request: service_pb2.RecordPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordPaymentResponse:
        return service_pb2.RecordPaymentResponse(payment=payments_pb2.Payment(payment_id=request_id_var.get()))

    async def GetPayment(
        self, request: service_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetPaymentResponse:
        if request.merchant_id == "bad":
            raise InvalidArgument("BAD_MERCHANT", "merchant_id is bad")
        if request.merchant_id == "db-down":
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        raise RuntimeError("secret internals")


def _generic_only(servicer: _Servicer, server: grpc.aio.Server) -> None:
    """A registration with a generic handler alone (no per-method registration after it)."""
    handlers = {
        "GetPayment": grpc.unary_unary_rpc_method_handler(
            servicer.GetPayment,
            request_deserializer=service_pb2.GetPaymentRequest.FromString,
            response_serializer=service_pb2.GetPaymentResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture(params=["generated", "generic-only"])
async def stub(request: pytest.FixtureRequest) -> AsyncIterator[service_grpc.PaymentIntakeServiceStub]:
    server = GrpcServer([SERVICE])
    add = service_grpc.add_PaymentIntakeServiceServicer_to_server if request.param == "generated" else _generic_only
    server.add_servicer(add, _Servicer())
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield service_grpc.PaymentIntakeServiceStub(channel)
    finally:
        await server.stop(0)


async def test_fapiao_error_becomes_its_status_with_the_reason_in_trailers(
    stub: service_grpc.PaymentIntakeServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetPayment(service_pb2.GetPaymentRequest(merchant_id="bad"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "merchant_id is bad" in (caught.value.details() or "")
    assert ("fapiao-reason", "BAD_MERCHANT") in tuple(caught.value.trailing_metadata() or ())


async def test_unexpected_errors_are_internal_without_details(stub: service_grpc.PaymentIntakeServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetPayment(service_pb2.GetPaymentRequest(merchant_id="other"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")


async def test_a_lost_database_is_unavailable_with_its_reason(stub: service_grpc.PaymentIntakeServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetPayment(service_pb2.GetPaymentRequest(merchant_id="db-down"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("fapiao-reason", "DATABASE_UNAVAILABLE") in tuple(caught.value.trailing_metadata() or ())
    assert "middle of operation" not in (caught.value.details() or "")


async def test_request_id_comes_from_the_caller_or_is_new() -> None:
    server = GrpcServer([SERVICE])
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, _Servicer())
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_grpc.PaymentIntakeServiceStub(channel)
            given = await stub.RecordPayment(service_pb2.RecordPaymentRequest(), metadata=(("x-request-id", "req-42"),))
            first = await stub.RecordPayment(service_pb2.RecordPaymentRequest())
            second = await stub.RecordPayment(service_pb2.RecordPaymentRequest())
    finally:
        await server.stop(0)
    assert given.payment.payment_id == "req-42"
    assert first.payment.payment_id and second.payment.payment_id
    assert first.payment.payment_id != second.payment.payment_id


async def test_health_waits_for_the_service_to_be_ready() -> None:
    """A service that must load state first (a validator its chains) is NOT_SERVING until it has."""
    ready = asyncio.Event()
    server = GrpcServer([SERVICE])
    port = await server.start("127.0.0.1", 0, ready=ready)
    try:
        assert await grpc_health(port) == "NOT_SERVING"
        ready.set()
        for _ in range(100):
            if await grpc_health(port) == "SERVING":
                break
            await asyncio.sleep(0.02)
        assert await grpc_health(port) == "SERVING"
    finally:
        await server.stop(0.1)


async def test_health_lists_every_service_status() -> None:
    server = GrpcServer([SERVICE])
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    finally:
        await server.stop(0)
    assert {name: status.status for name, status in reply.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        SERVICE: health_pb2.HealthCheckResponse.SERVING,
    }
