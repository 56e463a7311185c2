"""Hostile HTTP on every gateway route: odd methods, paths, headers and encodings get a 4xx (never a 5xx),
the webhook forward refuses what intake must never see, a lost backend is 503 with Retry-After, and the
log holds plain lines only."""

from __future__ import annotations

import logging
import uuid

import aiohttp
import grpc
import pytest
from aiohttp import web
from fapiao_runtime.http_edge import SERVER_ARGS
from gateway.app import METRICS, observe
from gateway.metrics import GatewayMetrics
from gateway.view_tokens import ViewTokens

from tests.gateway.conftest import TEST_SECRET, RunningGateway, settings_for, start_gateway
from tests.gateway.fake_backends import FakeBackends
from tests.gateway.raw_http import assert_no_traceback, send_raw

pytestmark = pytest.mark.unit

SERIAL = b"Wechatpay-Serial: 5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
NOTIFY = b"POST /v1/notify/wechatpay/m1 HTTP/1.1\r\nContent-Type: application/json"

ODD_REQUESTS = [
    b"GET /no/such/route HTTP/1.1",
    b"GET /../../etc/passwd HTTP/1.1",
    b"GET /claim/..%2F..%2Fetc%2Fpasswd HTTP/1.1",
    b"GET /claim/%ff%fe%00aaaaaaaa HTTP/1.1",
    b"GET /claim/aaaaaaaaaaaa%0A HTTP/1.1",
    b"GET /claim/aaaaaaaaaaaa%00 HTTP/1.1",
    b"GET /claim/" + b"a" * 4000 + b" HTTP/1.1",
    b"GET /invoice/%00/pdf HTTP/1.1",
    b"GET /invoice/\xc3\xa9.\xc3\xa9/pdf HTTP/1.1",
    b"GET /invoice/a.b%ED%A0%80 HTTP/1.1",
    b"GET /invoice/" + b"A" * 299 + b".A/pdf HTTP/1.1",
    b"GET /verify?number=%ED%A0%80&date=%ff&total=%zz HTTP/1.1",
    b"GET /verify?qr=%00%01%02&qr=2 HTTP/1.1",
    b"GET /verify?" + b"qr=" + b"A" * 6000 + b" HTTP/1.1",
    b"GET /verify?" + b"&".join(b"k%d=v" % n for n in range(1500)) + b" HTTP/1.1",
    b"GET /healthz?%%%% HTTP/1.1",
    b"HEAD /verify HTTP/1.1",
    b"HEAD /invoice/x.y/pdf HTTP/1.1",
    b"OPTIONS /verify HTTP/1.1",
    b"OPTIONS * HTTP/1.1",
    b"TRACE / HTTP/1.1",
    b"DELETE /claim/aaaaaaaaaaaa HTTP/1.1",
    b"PUT /healthz HTTP/1.1",
    b"BREW /verify HTTP/1.1",
    b"GET /verify HTTP/1.1\r\nX-Huge: " + b"a" * 70_000,
    b"GET /verify HTTP/1.1\r\n" + b"\r\n".join(b"X-H%d: v" % n for n in range(300)),
    b"GET /verify HTTP/1.1\r\nHost\r\nBroken header",
    b"GET /verify HTTP/1.1\r\nContent-Length: -1",
    b"GET /verify HTTP/9.9",
    b"GARBAGE",
    b"POST /verify HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded",
    b"POST /verify HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10",
]


@pytest.mark.parametrize("head", ODD_REQUESTS, ids=lambda head: head[:40].decode("latin-1"))
async def test_odd_requests_get_a_4xx_and_a_plain_log_line(
    head: bytes, gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = b"zz\r\nnot a chunk" if b"chunked" in head else b""
    if b"Content-Length: 10" in head:
        head, body = head.replace(b"\r\nContent-Length: 10", b""), b"number=1%"
    response = await send_raw(gateway.url, head, body)
    assert response.status < 500, (response.status, response.body[:300])
    assert_no_traceback(caplog)


async def test_the_webhook_forward_refuses_what_intake_must_never_see(
    gateway: RunningGateway, backends: FakeBackends, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    backends.intake.received.clear()
    cases = {
        b"POST /v1/notify/wechatpay/m1%0A HTTP/1.1": (404, "UNKNOWN_MERCHANT"),
        b"POST /v1/notify/wechatpay/m%001 HTTP/1.1": (404, "UNKNOWN_MERCHANT"),
        NOTIFY + b"\r\nWechatpay-Serial: \xff\xfe\x80": (401, "MALFORMED_HEADERS"),
        NOTIFY + b"\r\nWechatpay-Nonce: \xc3\x28abc": (401, "MALFORMED_HEADERS"),
        NOTIFY + b"\r\nContent-Encoding: gzip\r\n" + SERIAL: (400, "UNSUPPORTED_CONTENT_ENCODING"),
    }
    for head, (status, code) in cases.items():
        response = await send_raw(gateway.url, head, b"{}")
        assert (response.status, code.encode() in response.body) == (status, True), (head, response)
    assert backends.intake.received == []
    assert_no_traceback(caplog)


async def test_intake_asking_for_a_retry_is_passed_on(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    backends.intake.status, backends.intake.body = 503, {"code": "DATABASE_UNAVAILABLE", "message": "retry"}
    try:
        async with http.post(f"{gateway.url}/v1/notify/wechatpay/m1", data=b"{}") as response:
            assert response.status == 503 and (await response.json())["code"] == "DATABASE_UNAVAILABLE"
    finally:
        backends.intake.status, backends.intake.body = 200, {"code": "SUCCESS", "message": "ok"}


async def test_lost_backends_are_503_with_retry_after(
    backends: FakeBackends, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    down = await start_gateway(
        settings_for(
            backends,
            minting_endpoint="127.0.0.1:1",
            ledger_endpoints=("127.0.0.1:1",),
            intake_webhook_url="http://127.0.0.1:1",
        )
    )
    token = uuid.uuid4().hex
    backends.minting.add_offer(token, [("Oolong tea", 1, 1000)])
    form = {"buyer_kind": "person", "name": "Li Si", "tax_id": "", "idempotency_key": "k"}
    view = ViewTokens(TEST_SECRET, 600).issue(str(uuid.uuid4()))
    try:
        for method, path, data in (
            ("GET", f"/claim/{token}", None),
            ("POST", f"/claim/{token}", form),
            ("GET", f"/invoice/{view}", None),
            ("GET", f"/invoice/{view}/pdf", None),
            ("POST", "/verify", {"number": "1" * 20, "date": "20261124", "total": "1"}),
            ("POST", "/v1/notify/wechatpay/m1", b"{}"),
        ):
            async with http.request(method, f"{down.url}{path}", data=data) as response:
                assert response.status == 503, path
                assert int(response.headers["Retry-After"]) >= 1, path
    finally:
        await down.runner.cleanup()
    assert_no_traceback(caplog)


async def test_an_unexpected_error_is_503_for_a_lost_dependency_else_500_logged_once(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway's last line (its middleware): an exception no handler expected."""
    caplog.set_level(logging.INFO)

    async def lost(_: web.Request) -> web.Response:
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")

    async def defect(_: web.Request) -> web.Response:
        raise RuntimeError("a defect")

    app = web.Application(middlewares=[observe])
    app[METRICS] = GatewayMetrics()
    app.router.add_get("/lost", lost)
    app.router.add_get("/defect", defect)
    runner = web.AppRunner(app, access_log=None, **SERVER_ARGS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with http.get(f"{url}/lost") as response:
            assert response.status == 503 and int(response.headers["Retry-After"]) >= 1
            assert 'data-reason="UPSTREAM_UNAVAILABLE"' in await response.text()
        assert_no_traceback(caplog)
        async with http.get(f"{url}/defect") as response:
            assert response.status == 500
    finally:
        await runner.cleanup()
    assert len([record for record in caplog.records if record.exc_info]) == 1
