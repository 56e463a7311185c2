"""Every method served by the runtime's gRPC server is counted under the standard gRPC server metric names
(go-grpc-prometheus / py-grpc-prometheus): started, handled by code, handling time, messages in and out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from fapiao.ledger.v1 import ledger_service_pb2 as ledger_pb2
from fapiao.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from fapiao_runtime.errors import NotFound
from fapiao_runtime.grpc_server import GRPC_CODE_LABELS, GrpcServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

pytestmark = pytest.mark.unit

SERVICE = "fapiao.ledger.v1.LedgerService"


class _Ledger(ledger_grpc.LedgerServiceServicer):
    """GetBlock: found at height 1 only; StreamBlocks: as many blocks as from_height says."""

    async def GetBlock(self, request: ledger_pb2.GetBlockRequest, context: grpc.aio.ServicerContext) -> object:
        if request.height != 1:
            raise NotFound("BLOCK_NOT_FOUND", "no such block")
        return ledger_pb2.GetBlockResponse()

    async def StreamBlocks(
        self, request: ledger_pb2.StreamBlocksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_pb2.StreamBlocksResponse]:
        for _ in range(request.from_height):
            yield ledger_pb2.StreamBlocksResponse()


def _value(name: str, method: str, grpc_type: str, **extra: str) -> float:
    labels = {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method, **extra}
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = GrpcServer([SERVICE])
    server.add_servicer(ledger_grpc.add_LedgerServiceServicer_to_server, _Ledger())
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
            yield opened
    finally:
        await server.stop(0)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> ledger_grpc.LedgerServiceStub:
    return ledger_grpc.LedgerServiceStub(channel)


def test_codes_are_spelled_as_go_spells_them() -> None:
    assert GRPC_CODE_LABELS["OK"] == "OK"
    assert GRPC_CODE_LABELS["INVALID_ARGUMENT"] == "InvalidArgument"
    assert GRPC_CODE_LABELS["DEADLINE_EXCEEDED"] == "DeadlineExceeded"
    assert len(set(GRPC_CODE_LABELS.values())) == len(grpc.StatusCode)


async def test_unary_calls_are_counted_by_code(stub: ledger_grpc.LedgerServiceStub) -> None:
    metrics = ("grpc_server_started_total", "grpc_server_msg_received_total", "grpc_server_msg_sent_total")
    before = {name: _value(name, "GetBlock", "unary") for name in metrics}
    ok_before = _value("grpc_server_handled_total", "GetBlock", "unary", grpc_code="OK")
    missing_before = _value("grpc_server_handled_total", "GetBlock", "unary", grpc_code="NotFound")
    timed_before = _value("grpc_server_handling_seconds_count", "GetBlock", "unary")
    await stub.GetBlock(ledger_pb2.GetBlockRequest(height=1))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetBlock(ledger_pb2.GetBlockRequest(height=2))
    after = {name: _value(name, "GetBlock", "unary") - before[name] for name in metrics}
    assert after == {
        "grpc_server_started_total": 2,
        "grpc_server_msg_received_total": 2,
        "grpc_server_msg_sent_total": 1,  # the refused call sent no response message
    }
    assert _value("grpc_server_handled_total", "GetBlock", "unary", grpc_code="OK") - ok_before == 1
    assert _value("grpc_server_handled_total", "GetBlock", "unary", grpc_code="NotFound") - missing_before == 1
    assert _value("grpc_server_handling_seconds_count", "GetBlock", "unary") - timed_before == 2


async def test_a_server_stream_counts_every_message_it_sends(stub: ledger_grpc.LedgerServiceStub) -> None:
    sent_before = _value("grpc_server_msg_sent_total", "StreamBlocks", "server_stream")
    started_before = _value("grpc_server_started_total", "StreamBlocks", "server_stream")
    ok_before = _value("grpc_server_handled_total", "StreamBlocks", "server_stream", grpc_code="OK")
    received = [r async for r in stub.StreamBlocks(ledger_pb2.StreamBlocksRequest(from_height=3))]
    assert len(received) == 3
    assert _value("grpc_server_msg_sent_total", "StreamBlocks", "server_stream") - sent_before == 3
    assert _value("grpc_server_started_total", "StreamBlocks", "server_stream") - started_before == 1
    assert _value("grpc_server_handled_total", "StreamBlocks", "server_stream", grpc_code="OK") - ok_before == 1


async def test_health_checks_are_counted_too(channel: grpc.aio.Channel) -> None:
    labels = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"}
    before = REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert (REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0) - before == 1
