"""One request decoding policy for every gRPC method the runtime serves, health and reflection included:
undecodable bytes and text no field may hold are INVALID_ARGUMENT with a reason, before any method runs;
streams map errors as unary calls do and close cleanly when the client hangs up; a refusal is one log line."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2, ledger_service_pb2_grpc
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.logs import request_id_var
from fapiao_runtime.text import check_message_text
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

pytestmark = pytest.mark.unit

PAYMENTS = "fapiao.payments.v1.PaymentIntakeService"
LEDGER = "fapiao.ledger.v1.LedgerService"
# A length-delimited field whose length runs past the end of the message.
TRUNCATED = b"\x0a\x05ab"
# merchant_id (field 1) holding the bytes FF FE, which are not UTF-8.
NOT_UTF8 = b"\x0a\x02\xff\xfe"


class _Payments(service_grpc.PaymentIntakeServiceServicer):
    """Records the requests that reach it; GetPayment fails as its merchant id asks."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def RecordPayment(
        self, request: service_pb2.RecordPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordPaymentResponse:
        self.seen.append(request)
        return service_pb2.RecordPaymentResponse(payment=payments_pb2.Payment(merchant_id=request.merchant_id))

    async def GetPayment(
        self, request: service_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetPaymentResponse:
        self.seen.append(request)
        raise InvalidArgument("BAD_MERCHANT", "merchant_id is bad")


class _Ledger(ledger_service_pb2_grpc.LedgerServiceServicer):
    """StreamBlocks: one block, then what chain_id asks for (1: a FapiaoError, 2: a lost database,
    3: a bug, 0: a thousand more blocks). Records whether the stream's own cleanup ran, and in which context."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def StreamBlocks(  # type: ignore[override]
        self, request: ledger_service_pb2.StreamBlocksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_service_pb2.StreamBlocksResponse]:
        try:
            yield ledger_service_pb2.StreamBlocksResponse(block=ledger_pb2.Block(header=b"first"))
            if request.chain_id == 1:
                raise InvalidArgument("UNKNOWN_CHAIN", "chain 1 does not exist")
            if request.chain_id == 2:
                raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
            if request.chain_id == 3:
                raise RuntimeError("secret internals")
            for _ in range(1000):  # more than the client reads before it cancels
                yield ledger_service_pb2.StreamBlocksResponse(block=ledger_pb2.Block(header=b"x" * 10_000))
        finally:
            self.closed.append(request_id_var.get())


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, _Payments, _Ledger]]:
    payments, ledger = _Payments(), _Ledger()
    server = GrpcServer([PAYMENTS, LEDGER])
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, payments)
    server.add_servicer(ledger_service_pb2_grpc.add_LedgerServiceServicer_to_server, ledger)
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, payments, ledger
    finally:
        await server.stop(0)


def _raw(channel: grpc.aio.Channel, method: str, kind: str = "unary_unary") -> Callable[..., Any]:
    """A call of `method` that sends the given bytes as they are."""
    make = getattr(channel, kind)
    return make(method, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)  # type: ignore[no-any-return]


def _reason(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("fapiao-reason", "")  # type: ignore[arg-type, return-value]


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    return caught.value


# Every kind of method: unary, server streaming, the health service and reflection (bidi streaming).
METHODS = [
    ("/fapiao.payments.v1.PaymentIntakeService/RecordPayment", "unary_unary"),
    ("/fapiao.ledger.v1.LedgerService/StreamBlocks", "unary_stream"),
    ("/grpc.health.v1.Health/Check", "unary_unary"),
    ("/grpc.health.v1.Health/Watch", "unary_stream"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "stream_stream"),
]


@pytest.mark.parametrize(
    ("method", "kind", "raw", "reason"),
    [(m, k, raw, "MALFORMED_REQUEST") for m, k in METHODS for raw in (TRUNCATED, b"\xff" * 7)]
    # StreamBlocksRequest has no string field to hold bytes that are not UTF-8.
    + [(m, k, NOT_UTF8, "INVALID_CHARACTERS") for m, k in METHODS if "StreamBlocks" not in m],
)
async def test_undecodable_bytes_are_invalid_argument_on_every_method(
    served: tuple[grpc.aio.Channel, _Payments, _Ledger], method: str, kind: str, raw: bytes, reason: str
) -> None:
    channel, payments, _ = served
    call = _raw(channel, method, kind)
    error = await _refused(call(iter([raw])) if kind == "stream_stream" else call(raw))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(error) == reason
    assert (error.details() or "").startswith(f"{reason}: ")
    for decoder_text in ("parsing", "Wire format", "UTF-8 ", "Traceback"):  # never the decoder's own words
        assert decoder_text not in (error.details() or "")
    assert payments.seen == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (service_pb2.RecordPaymentRequest(merchant_id="123\x00"), "merchant_id"),
        (service_pb2.RecordPaymentRequest(transaction_id="42\u202e00"), "transaction_id"),  # a bidi override
        (service_pb2.RecordPaymentRequest(trade_type="JSAPI\n"), "trade_type"),
        (
            service_pb2.RecordPaymentRequest(
                items=[payments_pb2.PaymentItem(name="tea"), payments_pb2.PaymentItem(name="cake\x00")]
            ),
            "items[1].name",
        ),
    ],
)
async def test_a_bad_character_at_any_depth_is_refused_naming_the_field(
    served: tuple[grpc.aio.Channel, _Payments, _Ledger], request_: service_pb2.RecordPaymentRequest, field: str
) -> None:
    channel, payments, _ = served
    error = await _refused(service_grpc.PaymentIntakeServiceStub(channel).RecordPayment(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(error) == "INVALID_CHARACTERS"
    assert f"{field} contains" in (error.details() or "")
    assert payments.seen == []  # nothing reached the method (and so no database)


async def test_health_and_reflection_refuse_bad_characters_and_still_answer_good_requests(
    served: tuple[grpc.aio.Channel, _Payments, _Ledger],
) -> None:
    channel, _, _ = served
    health = health_pb2_grpc.HealthStub(channel)
    error = await _refused(health.Check(health_pb2.HealthCheckRequest(service="x\x00")))
    assert (error.code(), _reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS")
    assert (
        await health.Check(health_pb2.HealthCheckRequest(service=PAYMENTS))
    ).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    asked = reflection_pb2.ServerReflectionRequest(file_containing_symbol="fapiao.\x00")
    error = await _refused(reflection.ServerReflectionInfo(iter([asked])))
    assert (error.code(), _reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS")
    listed = [
        r
        async for r in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    ]
    assert PAYMENTS in {s.name for s in listed[0].list_services_response.service}


async def test_good_text_passes_untouched(served: tuple[grpc.aio.Channel, _Payments, _Ledger]) -> None:
    channel, payments, _ = served
    reply = await service_grpc.PaymentIntakeServiceStub(channel).RecordPayment(
        service_pb2.RecordPaymentRequest(
            merchant_id="深圳 café 1230000109", items=[payments_pb2.PaymentItem(name="茶 tea")]
        )
    )
    assert reply.payment.merchant_id == "深圳 café 1230000109"
    assert len(payments.seen) == 1


def test_only_fields_named_multiline_may_hold_tabs_and_line_breaks() -> None:
    request = service_pb2.RecordRefundRequest(reason="damaged\ton arrival\r\nreturned")
    with pytest.raises(InvalidArgument) as caught:
        check_message_text(request)
    assert caught.value.reason == "INVALID_CHARACTERS"
    check_message_text(request, frozenset({"fapiao.payments.v1.RecordRefundRequest.reason"}))
    with pytest.raises(InvalidArgument):  # still no NUL, even where line breaks are allowed
        check_message_text(
            service_pb2.RecordRefundRequest(reason="a\x00"),
            frozenset({"fapiao.payments.v1.RecordRefundRequest.reason"}),
        )


@pytest.mark.parametrize(
    ("chain_id", "code", "reason"),
    [
        (1, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CHAIN"),
        (2, grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE"),
        (3, grpc.StatusCode.INTERNAL, "INTERNAL"),  # every error names a reason (ErrorInfo requires one)
    ],
)
async def test_a_stream_maps_errors_as_a_unary_call_does(
    served: tuple[grpc.aio.Channel, _Payments, _Ledger], chain_id: int, code: grpc.StatusCode, reason: str
) -> None:
    channel, _, _ = served
    call = ledger_service_pb2_grpc.LedgerServiceStub(channel).StreamBlocks(
        ledger_service_pb2.StreamBlocksRequest(chain_id=chain_id)
    )
    assert (await call.read()).block.header == b"first"  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    error = caught.value
    assert error.code() == code
    assert _reason(error) == reason
    assert "secret" not in (error.details() or "") and "middle of operation" not in (error.details() or "")


async def test_a_client_cancelling_a_stream_leaves_no_task_exception(
    served: tuple[grpc.aio.Channel, _Payments, _Ledger],
) -> None:
    """The stream's generator is closed in the call's own task (its cleanup sees the call's request id),
    not later by the garbage collector in another context."""
    channel, _, ledger = served
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, problem: problems.append(problem))
    try:
        stub = ledger_service_pb2_grpc.LedgerServiceStub(channel)
        for n in range(20):
            call = stub.StreamBlocks(
                ledger_service_pb2.StreamBlocksRequest(chain_id=0), metadata=(("x-request-id", f"cancel-{n}"),)
            )
            await call.read()
            call.cancel()
        for _ in range(200):
            if len(ledger.closed) == 20:
                break
            await asyncio.sleep(0.01)
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(previous)
    assert problems == []
    assert sorted(ledger.closed) == sorted(f"cancel-{n}" for n in range(20))


async def test_a_refusal_is_one_log_line_with_its_reason_and_no_traceback(
    served: tuple[grpc.aio.Channel, _Payments, _Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    channel, _, _ = served
    stub = service_grpc.PaymentIntakeServiceStub(channel)
    with caplog.at_level(logging.INFO):
        await _refused(stub.GetPayment(service_pb2.GetPaymentRequest(merchant_id="m")))
        await _refused(_raw(channel, "/fapiao.payments.v1.PaymentIntakeService/GetPayment")(TRUNCATED))
    records = [r for r in caplog.records if r.name.startswith(("fapiao_runtime", "grpc"))]
    assert [(r.levelno, getattr(r, "reason", None)) for r in records] == [
        (logging.INFO, "BAD_MERCHANT"),
        (logging.INFO, "MALFORMED_REQUEST"),
    ]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records)
