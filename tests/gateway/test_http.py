"""The gateway over real HTTP against in-process fake backends (real gRPC, real signatures)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import aiohttp
import pytest
from fapiao.invoicing.v1 import invoice_pb2
from gateway.view_tokens import ViewTokens

from tests.gateway.conftest import TEST_SECRET, RunningGateway, settings_for, start_gateway
from tests.gateway.fake_backends import SELLER, FakeBackends, uscc

pytestmark = pytest.mark.unit

GOOD_TAX_ID = uscc("91110108MA01ABCD1")
BAD_TAX_ID = GOOD_TAX_ID[:-1] + ("0" if GOOD_TAX_ID[-1] != "0" else "1")


def _hidden_key(html: str) -> str:
    match = re.search(r'name="idempotency_key" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _reason_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*data-reason="([^"]*)"', html)
    return match.group(1) if match else ""


def _new_offer(backends: FakeBackends, **kwargs: object) -> str:
    token = uuid.uuid4().hex + uuid.uuid4().hex
    backends.minting.add_offer(token, [("Oolong tea", 2, 5600)], **kwargs)  # type: ignore[arg-type]
    return token


async def test_health_and_metrics(gateway: RunningGateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway.url}/healthz") as response:
        assert response.status == 200 and (await response.json())["status"] == "SERVING"
    async with http.get(f"{gateway.url}/metrics") as response:
        text = await response.text()
    assert response.status == 200
    assert 'fapiao_http_requests_total{route="/healthz",status="200"}' in text


async def test_webhook_is_forwarded_byte_exact(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    backends.intake.received.clear()
    body = '{"id":"n-1",  "summary":"支付成功",\n "resource":{"ciphertext":"AAEC+/=="}}\r\n'.encode()
    headers = {
        "Content-Type": "application/json",
        "Wechatpay-Serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "Wechatpay-Signature": "c2lnbmF0dXJl",
        "Wechatpay-Timestamp": "1700000000",
        "Wechatpay-Nonce": "n0nce",
        "Cookie": "session=secret",
        "Authorization": "Bearer nope",
    }
    async with http.post(f"{gateway.url}/v1/notify/wechatpay/m1", data=body, headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {"code": "SUCCESS", "message": "ok"}
    [(merchant_id, received, received_headers)] = backends.intake.received
    assert merchant_id == "m1" and received == body
    for name in ("Wechatpay-Serial", "Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Content-Type"):
        assert received_headers[name] == headers[name]
    assert "Cookie" not in received_headers and "Authorization" not in received_headers


async def test_webhook_returns_intake_rejections_as_they_are(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    backends.intake.status, backends.intake.body = (
        401,
        {"code": "BAD_SIGNATURE", "message": "signature does not verify"},
    )
    try:
        async with http.post(f"{gateway.url}/v1/notify/wechatpay/m1", data=b"{}") as response:
            assert response.status == 401
            assert await response.json() == {"code": "BAD_SIGNATURE", "message": "signature does not verify"}
    finally:
        backends.intake.status, backends.intake.body = 200, {"code": "SUCCESS", "message": "ok"}


async def test_webhook_timeout_and_unreachable_intake(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    backends.intake.delay_s = 3.0  # the test gateway's bound is 1 s
    try:
        started = time.monotonic()
        async with http.post(f"{gateway.url}/v1/notify/wechatpay/m1", data=b"{}") as response:
            assert response.status == 504
            assert (await response.json())["code"] == "UPSTREAM_TIMEOUT"
        assert time.monotonic() - started < 2.5
    finally:
        backends.intake.delay_s = 0.0
    down = await start_gateway(settings_for(backends, intake_webhook_url="http://127.0.0.1:1"))
    try:
        async with http.post(f"{down.url}/v1/notify/wechatpay/m1", data=b"{}") as response:
            assert response.status == 503 and (await response.json())["code"] == "UPSTREAM_UNAVAILABLE"
            assert response.headers["Retry-After"] == "5", "the payment platform is told to come back"
        async with http.post(f"{down.url}/v1/notify/wechatpay/m1", data=b"x" * 70_000) as response:
            assert response.status == 413
        async with http.post(f"{down.url}/v1/notify/wechatpay/..%2Fadmin", data=b"{}") as response:
            assert response.status == 404
    finally:
        await down.runner.cleanup()


async def test_claim_page_shows_the_offer_with_a_fresh_key_per_render(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _new_offer(backends)
    async with http.get(f"{gateway.url}/claim/{token}") as response:
        first = await response.text()
        assert response.status == 200
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "script-src 'nonce-" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
    async with http.get(f"{gateway.url}/claim/{token}") as response:
        second = await response.text()
    assert SELLER.name in first and "¥112.00" in first and "Oolong tea" in first
    assert 'id="claim-by">2026年12月24日 17:30<' in first, "expiry shown in Beijing time, as Chinese reads it"
    assert _hidden_key(first) != _hidden_key(second)
    assert "http://" not in first.split("</head>")[1] and "https://" not in first, "no external assets"


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"), [({}, 404, "UNKNOWN_TOKEN"), ({"expired": True}, 410, "TOKEN_EXPIRED")]
)
async def test_unknown_and_expired_claim_links(
    gateway: RunningGateway,
    backends: FakeBackends,
    http: aiohttp.ClientSession,
    kwargs: dict[str, bool],
    status: int,
    reason: str,
) -> None:
    token = _new_offer(backends, **kwargs) if kwargs else "not-a-real-token-0123456789"
    async with http.get(f"{gateway.url}/claim/{token}") as response:
        assert response.status == status
        assert f'data-reason="{reason}"' in await response.text()


@pytest.mark.parametrize("token", ["short-token", "a" * 129, "dotted.token.0123456789abc", "tilde~token~0123456789abc"])
async def test_a_link_that_cannot_be_a_claim_token_is_unknown_without_asking_minting(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession, token: str
) -> None:
    async with http.post(
        f"{gateway.url}/claim/{token}",
        data={"buyer_kind": "person", "name": "张三", "tax_id": "", "idempotency_key": "k1"},
        allow_redirects=False,
    ) as response:
        assert response.status == 404
        assert 'data-reason="UNKNOWN_TOKEN"' in await response.text()
    assert backends.minting.claim_calls == 0


@pytest.mark.parametrize(
    ("form", "field", "reason"),
    [
        ({"buyer_kind": "company", "name": "Buyer Co", "tax_id": BAD_TAX_ID}, "tax_id", "INVALID_TAX_ID"),
        ({"buyer_kind": "company", "name": "Buyer Co", "tax_id": ""}, "tax_id", "INVALID_TAX_ID"),
        ({"buyer_kind": "person", "name": "  ", "tax_id": ""}, "name", "NAME_REQUIRED"),
        ({"buyer_kind": "person", "name": "x" * 101, "tax_id": ""}, "name", "NAME_TOO_LONG"),
        ({"buyer_kind": "alien", "name": "x", "tax_id": ""}, "buyer_kind", "INVALID_BUYER_KIND"),
    ],
)
async def test_invalid_buyer_is_shown_next_to_the_field_and_claims_nothing(
    gateway: RunningGateway,
    backends: FakeBackends,
    http: aiohttp.ClientSession,
    form: dict[str, str],
    field: str,
    reason: str,
) -> None:
    token = _new_offer(backends)
    async with http.post(
        f"{gateway.url}/claim/{token}", data={**form, "idempotency_key": "k1"}, allow_redirects=False
    ) as response:
        html = await response.text()
    assert response.status == 400
    assert _reason_of(html, f"{field}-error") == reason
    assert f'id="{field}"' not in html or 'aria-invalid="true"' in html
    if form["name"].strip() and len(form["name"]) < 50:
        assert f'value="{form["name"]}"' in html, "typed values are kept"
    assert not backends.minting.offers[token].claimed_by_key


async def test_double_submit_gives_one_invoice_and_a_private_view_link(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _new_offer(backends)
    async with http.get(f"{gateway.url}/claim/{token}") as response:
        key = _hidden_key(await response.text())
    form = {"buyer_kind": "company", "name": "Buyer Co 买方", "tax_id": GOOD_TAX_ID.lower(), "idempotency_key": key}

    async def submit() -> str:
        async with http.post(f"{gateway.url}/claim/{token}", data=form, allow_redirects=False) as response:
            assert response.status == 303, await response.text()
            return response.headers["Location"]

    locations = await asyncio.gather(*(submit() for _ in range(5)))
    tokens = ViewTokens(TEST_SECRET, 3600)
    invoice_ids = {tokens.open(location.removeprefix("/invoice/")) for location in locations}
    assert invoice_ids == {backends.minting.offers[token].invoice_id}
    [invoice_id] = invoice_ids
    assert all(location.startswith("/invoice/") and invoice_id not in location for location in locations)
    # Another render (new key) after the claim: refused, and the page does not reveal the buyer.
    async with http.post(
        f"{gateway.url}/claim/{token}", data={**form, "idempotency_key": "other"}, allow_redirects=False
    ) as response:
        html = await response.text()
    assert response.status == 409 and 'data-reason="ALREADY_CLAIMED"' in html and "Buyer Co" not in html
    async with http.get(f"{gateway.url}/claim/{token}") as response:
        html = await response.text()
    assert response.status == 409 and "Buyer Co" not in html and GOOD_TAX_ID not in html

    # The invoice page: PENDING with auto-refresh, then ISSUED with the PDF.
    async with http.get(f"{gateway.url}{locations[0]}") as response:
        html = await response.text()
    assert response.status == 200 and 'data-status="PENDING"' in html and 'http-equiv="refresh"' in html
    assert "Buyer Co" in html and GOOD_TAX_ID in html
    async with http.get(f"{gateway.url}{locations[0]}/pdf") as response:
        assert response.status == 409
    deadline = time.monotonic() + 10
    while 'data-status="ISSUED"' not in html and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        async with http.get(f"{gateway.url}{locations[0]}") as response:
            html = await response.text()
    assert 'data-status="ISSUED"' in html and 'http-equiv="refresh"' not in html
    assert 'id="ledger-status" data-status="NOT_REIMBURSED">未报销' in html, "ledger status verified from the receipt"
    async with http.get(f"{gateway.url}{locations[0]}/pdf") as response:
        pdf = await response.read()
        assert response.status == 200 and response.headers["Content-Type"] == "application/pdf"
        assert "attachment" in response.headers["Content-Disposition"]
    assert pdf.startswith(b"%PDF-") and b"/Subtype /Image" in pdf and pdf.rstrip().endswith(b"%%EOF")


async def test_view_links_are_unforgeable_and_expire(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _new_offer(backends)
    form = {"buyer_kind": "person", "name": "Zhang San 张三", "tax_id": "", "idempotency_key": "kk"}
    async with http.post(f"{gateway.url}/claim/{token}", data=form, allow_redirects=False) as response:
        location = response.headers["Location"]
    invoice_id = backends.minting.offers[token].invoice_id
    view = location.removeprefix("/invoice/")
    cases = {
        f"/invoice/{view[:-3]}AAA": 404,  # altered MAC
        f"/invoice/{token}": 404,  # the claim token does not open the invoice
        f"/invoice/{invoice_id}": 404,  # nor does the bare invoice id
        f"/invoice/{ViewTokens(b'another-secret-of-32-bytes-......', 60).issue(invoice_id)}": 404,
        f"/invoice/{ViewTokens(TEST_SECRET, 60).issue(invoice_id, now_s=time.time() - 120)}": 410,
        f"/invoice/{ViewTokens(TEST_SECRET, 60).issue(invoice_id, now_s=time.time() - 120)}/pdf": 410,
    }
    for path, status in cases.items():
        async with http.get(f"{gateway.url}{path}") as response:
            html = await response.text()
        assert response.status == status, path
        assert "Zhang San" not in html


async def _issued_invoice(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> invoice_pb2.Invoice:
    token = _new_offer(backends)
    form = {"buyer_kind": "company", "name": "Secret Buyer Ltd", "tax_id": GOOD_TAX_ID, "idempotency_key": "v"}
    async with http.post(f"{gateway.url}/claim/{token}", data=form, allow_redirects=False) as response:
        assert response.status == 303
    return await backends.minting.until_issued(backends.minting.offers[token].invoice_id)


async def test_verify_page_genuine_by_fields_and_by_qr(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    invoice = await _issued_invoice(gateway, backends, http)
    body = invoice.body
    fields = {"number": body.invoice_number, "date": body.issue_date, "total": "112.00"}
    async with http.post(f"{gateway.url}/verify", data=fields) as response:
        html = await response.text()
    assert response.status == 200 and 'data-outcome="GENUINE"' in html
    assert SELLER.name in html and SELLER.tax_id in html
    assert "Secret Buyer" not in html and GOOD_TAX_ID not in html
    async with http.get(f"{gateway.url}/verify", params={"qr": body.verification_qr}) as response:
        assert 'data-outcome="GENUINE"' in await response.text()
    async with http.post(f"{gateway.url}/verify", data={**fields, "total": "112.01"}) as response:
        html = await response.text()
    assert 'data-outcome="NO_MATCH"' in html and SELLER.name not in html
    async with http.post(f"{gateway.url}/verify", data={**fields, "number": "2" * 20}) as response:
        html = await response.text()
    assert 'data-outcome="NOT_ISSUED_HERE"' in html and "本平台未开具此发票" in html
    async with http.post(f"{gateway.url}/verify", data={**fields, "date": "2026-02-30"}) as response:
        html = await response.text()
    assert response.status == 400 and _reason_of(html, "date-error") == "INVALID_DATE"
    async with http.get(f"{gateway.url}/verify") as response:
        assert response.status == 200 and 'id="verify-form"' in await response.text()


async def test_verify_is_rate_limited_per_client(backends: FakeBackends, http: aiohttp.ClientSession) -> None:
    limited = await start_gateway(settings_for(backends, verify_burst=3, verify_per_minute=1.0))
    try:
        statuses = []
        for _ in range(5):
            async with http.post(
                f"{limited.url}/verify", data={"number": "1" * 20, "date": "20261124", "total": "1"}
            ) as r:
                statuses.append(r.status)
                retry_after = r.headers.get("Retry-After")
        assert statuses == [200, 200, 200, 429, 429]
        assert retry_after is not None and int(retry_after) >= 1
        async with http.get(f"{limited.url}/verify") as response:
            assert response.status == 200, "the empty form is not a check"
        async with http.get(f"{limited.url}/metrics") as response:
            assert "fapiao_gateway_rate_limited_total 2.0" in await response.text()
    finally:
        await limited.runner.cleanup()


async def test_backend_down_is_a_503_page_not_a_crash(backends: FakeBackends, http: aiohttp.ClientSession) -> None:
    down = await start_gateway(
        settings_for(backends, minting_endpoint="127.0.0.1:1", ledger_endpoints=("127.0.0.1:1",))
    )
    try:
        async with http.get(f"{down.url}/claim/{_new_offer(backends)}") as response:
            assert response.status == 503
        async with http.post(f"{down.url}/verify", data={"number": "1" * 20, "date": "20261124", "total": "1"}) as r:
            assert r.status == 503
    finally:
        await down.runner.cleanup()


async def test_verify_fails_over_when_every_validator_asked_is_down(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    """The page asks f + 1 validators in turn; when all of those are unreachable it goes on through the
    others, and only when none answers is it a 503."""
    invoice = await _issued_invoice(gateway, backends, http)
    fields = {"number": invoice.body.invoice_number, "date": invoice.body.issue_date, "total": "112.00"}
    dead = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
    live = f"127.0.0.1:{backends.ledger_ports[0]}"
    # Four endpoints, one alive: with f + 1 = 2 asked per check, the turns starting at the first two
    # endpoints ask only dead ones.
    mostly_down = await start_gateway(settings_for(backends, ledger_endpoints=(*dead, live), verify_burst=100))
    all_down = await start_gateway(settings_for(backends, ledger_endpoints=dead, verify_burst=100))
    try:
        calls_before = backends.ledger.calls
        for _ in range(4):  # every starting point of the turn
            async with http.post(f"{mostly_down.url}/verify", data=fields) as r:
                assert r.status == 200 and 'data-outcome="GENUINE"' in await r.text()
        assert backends.ledger.calls - calls_before >= 4
        async with http.post(f"{all_down.url}/verify", data=fields) as r:
            html = await r.text()
        assert r.status == 503 and 'data-outcome="GENUINE"' not in html
    finally:
        await mostly_down.runner.cleanup()
        await all_down.runner.cleanup()


async def test_guessing_date_and_total_of_a_known_number_is_stopped(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    invoice = await _issued_invoice(gateway, backends, http)
    guarded = await start_gateway(settings_for(backends, invoice_failure_burst=3, verify_burst=100))
    number, date = invoice.body.invoice_number, invoice.body.issue_date
    try:
        outcomes = []
        for total in ("1.00", "2.00", "3.00", "112.00"):
            async with http.post(f"{guarded.url}/verify", data={"number": number, "date": date, "total": total}) as r:
                html = await r.text()
                outcomes.append((r.status, re.search(r'data-(?:outcome|reason)="([A-Z_]+)"', html).group(1)))  # type: ignore[union-attr]
        assert outcomes == [(200, "NO_MATCH")] * 3 + [(429, "TOO_MANY_FAILED_CHECKS")]
        # Concurrent guesses at a fresh number cannot all slip past the budget while the ledger answers.
        fresh = await _issued_invoice(gateway, backends, http)

        async def guess(total: int) -> int:
            fields = {"number": fresh.body.invoice_number, "date": fresh.body.issue_date, "total": f"{total}.00"}
            async with http.post(f"{guarded.url}/verify", data=fields) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(guess(total) for total in range(1, 11)))
        assert sorted(statuses) == [200] * 3 + [429] * 7
        # Other invoice numbers are unaffected; genuine checks never use up the budget.
        other = await _issued_invoice(gateway, backends, http)
        for _ in range(5):
            fields = {"number": other.body.invoice_number, "date": other.body.issue_date, "total": "112.00"}
            async with http.post(f"{guarded.url}/verify", data=fields) as r:
                assert 'data-outcome="GENUINE"' in await r.text()
    finally:
        await guarded.runner.cleanup()
