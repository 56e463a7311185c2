"""W3C trace context: parsing, continuing a trace, the trace id in log lines and envelopes, and its travel
through the runtime's gRPC server, internal channels and HTTP edges."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime import tracing
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.grpc_client import internal_channel
from fapiao_runtime.grpc_server import GrpcServer
from fapiao_runtime.http_edge import trace_context
from fapiao_runtime.logs import JsonFormatter

pytestmark = pytest.mark.unit

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE}-00f067aa0ba902b7-01"
SERVICE = "fapiao.payments.v1.PaymentIntakeService"


def test_valid_traceparents_parse_and_invalid_ones_are_ignored() -> None:
    assert tracing.parse(INCOMING) == (TRACE, "00f067aa0ba902b7", "01")
    # A later version may carry more fields; the first four are read all the same.
    assert tracing.parse(f"cc-{TRACE}-00f067aa0ba902b7-01-what-the-future-holds") == (TRACE, "00f067aa0ba902b7", "01")
    for bad in (
        "",
        "garbage",
        f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # upper case is not allowed
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-00f067aa0ba902b7-01",  # version ff is invalid
        f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE}-00f067aa0ba902b7-1",
    ):
        assert tracing.parse(bad) is None and tracing.trace_id_of(bad) == "", bad


def test_a_child_keeps_the_trace_and_flags_with_a_new_span() -> None:
    child = tracing.child_of(INCOMING)
    parsed = tracing.parse(child)
    assert parsed is not None and parsed[0] == TRACE and parsed[2] == "01" and parsed[1] != "00f067aa0ba902b7"
    assert tracing.child_of(INCOMING) != child
    fresh = tracing.parse(tracing.child_of("not a traceparent"))
    assert fresh is not None and fresh[0] != TRACE


def test_the_trace_id_is_in_log_lines_and_envelopes_while_work_continues_a_trace() -> None:
    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO", "name": "t"})
    assert json.loads(JsonFormatter().format(record))["trace_id"] == ""
    event = payments_pb2.PaymentSucceeded()
    assert make_envelope(event, aggregate_id="a", producer="t").traceparent == ""
    with tracing.continued_from(INCOMING) as current:
        assert tracing.current() == current and tracing.trace_id() == TRACE
        assert json.loads(JsonFormatter().format(record))["trace_id"] == TRACE
        assert tracing.trace_id_of(make_envelope(event, aggregate_id="a", producer="t").traceparent) == TRACE
        assert make_envelope(event, aggregate_id="a", producer="t", traceparent="").traceparent == ""
    assert tracing.current() == ""


class _Echo(service_grpc.PaymentIntakeServiceServicer):
    """GetPayment answers the traceparent it is served in as the payment id."""

    async def GetPayment(
        self, request: service_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetPaymentResponse:
        logging.getLogger("echo").warning("serving")
        return service_pb2.GetPaymentResponse(payment=payments_pb2.Payment(payment_id=tracing.current()))


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = GrpcServer([SERVICE])
    server.add_servicer(service_grpc.add_PaymentIntakeServiceServicer_to_server, _Echo())
    bound = await server.start("127.0.0.1", 0)
    try:
        yield bound
    finally:
        await server.stop(0)


async def test_a_grpc_call_is_served_in_the_callers_trace_and_logs_it(port: int) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("echo").addHandler(handler)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_grpc.PaymentIntakeServiceStub(channel)
            traced = await stub.GetPayment(service_pb2.GetPaymentRequest(), metadata=(("traceparent", INCOMING),))
            untraced = await stub.GetPayment(service_pb2.GetPaymentRequest())
    finally:
        logging.getLogger("echo").removeHandler(handler)
    assert tracing.trace_id_of(traced.payment.payment_id) == TRACE
    assert traced.payment.payment_id != INCOMING  # the server's own span
    assert tracing.trace_id_of(untraced.payment.payment_id) not in ("", TRACE)  # a new trace
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["trace_id"] for line in lines] == [TRACE, tracing.trace_id_of(untraced.payment.payment_id)]


async def test_internal_channels_send_the_trace_onward(port: int) -> None:
    async with internal_channel(f"127.0.0.1:{port}") as channel:
        stub = service_grpc.PaymentIntakeServiceStub(channel)
        with tracing.continued_from(INCOMING):
            onward = await stub.GetPayment(service_pb2.GetPaymentRequest())
    assert tracing.trace_id_of(onward.payment.payment_id) == TRACE


async def test_an_http_request_is_served_in_its_trace() -> None:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=tracing.current())

    app = web.Application(middlewares=[trace_context])
    app.router.add_get("/", handle)
    async with TestClient(TestServer(app)) as client:
        traced = await (await client.get("/", headers={"traceparent": INCOMING})).text()
        untraced = await (await client.get("/")).text()
    assert tracing.trace_id_of(traced) == TRACE
    assert tracing.trace_id_of(untraced) not in ("", TRACE)
