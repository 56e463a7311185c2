"""Service processes run on uvloop unless FAPIAO_EVENT_LOOP says otherwise, and grpc.aio works on it."""

from __future__ import annotations

import grpc
import pytest
from fapiao_runtime import event_loop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

pytestmark = pytest.mark.unit


async def _health_round_trip() -> tuple[str, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("fapiao.Test", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="fapiao.Test"), timeout=5
            )
        return event_loop.loop_name(), reply.status
    finally:
        await server.stop(None)


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAPIAO_EVENT_LOOP", raising=False)
    assert event_loop.run(_health_round_trip()) == ("uvloop", health_pb2.HealthCheckResponse.SERVING)


def test_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_EVENT_LOOP", "asyncio")
    assert event_loop.run(_health_round_trip()) == ("asyncio", health_pb2.HealthCheckResponse.SERVING)


def test_unknown_loop_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAPIAO_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match=r"FAPIAO_EVENT_LOOP.*'trio'"):
        event_loop.new_event_loop()
