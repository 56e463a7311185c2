"""The JSON API over real HTTP against in-process fake backends: the OpenAPI document validates, every
operation it lists is called and answers what its schemas say, errors are JSON with gRPC's reasons."""

from __future__ import annotations

import gzip
import json
import logging
import uuid
from typing import Any

import aiohttp
import pytest
from gateway.api import ROUTES
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests.gateway.conftest import RunningGateway, settings_for, start_gateway
from tests.gateway.fake_backends import SELLER, FakeBackends, uscc
from tests.gateway.ledger_world import verification_qr
from tests.gateway.raw_http import assert_no_traceback, send_raw

pytestmark = pytest.mark.unit

GOOD_TAX_ID = uscc("91110108MA01ABCD1")
BAD_TAX_ID = GOOD_TAX_ID[:-1] + ("0" if GOOD_TAX_ID[-1] != "0" else "1")
JSON_ACCEPT = {"Accept": "application/json"}


def _offer(backends: FakeBackends) -> str:
    token = uuid.uuid4().hex + uuid.uuid4().hex
    backends.minting.add_offer(token, [("Oolong tea", 2, 5600)])
    return token


def _check(document: dict[str, Any], schema_name: str, body: object) -> None:
    """`body` is valid against components/schemas/`schema_name` of the served document."""
    schema = {**document, "$ref": f"#/components/schemas/{schema_name}"}
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
    assert not errors, [error.message for error in errors]


async def _document(gateway: RunningGateway, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(f"{gateway.url}/api/v1/openapi.json") as response:
        assert response.status == 200 and response.content_type == "application/json"
        document: dict[str, Any] = await response.json()
    return document


async def test_the_openapi_document_validates_and_lists_exactly_the_routes(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    document = await _document(gateway, http)
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    listed = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item if method != "parameters"
    }
    assert listed == {(method, path) for method, path, _ in ROUTES}


async def test_every_operation_answers_what_the_document_says(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    document = await _document(gateway, http)
    called: set[tuple[str, str]] = set()

    async def call(method: str, template: str, path: str, expect: int, **kwargs: Any) -> Any:
        async with http.request(method, f"{gateway.url}{path}", **kwargs) as response:
            operation = document["paths"][template][method.lower()]
            assert str(response.status) in operation["responses"], (template, response.status)
            content = operation["responses"][str(response.status)]["content"]
            assert response.content_type in content, (template, response.content_type)
            assert response.status == expect, (template, await response.text())
            called.add((method, template))
            if response.content_type != "application/json":
                return await response.read()
            body = await response.json()
            schema = content["application/json"]["schema"]
            if "$ref" in schema:
                _check(document, schema["$ref"].rsplit("/", 1)[1], body)
            return body

    await call("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", 200)
    token = _offer(backends)
    offer = await call("GET", "/api/v1/claims/{claim_token}", f"/api/v1/claims/{token}", 200)
    assert offer["amount"] == "112.00" and offer["merchant_name"] == SELLER.name
    # Every field problem at once, in the language asked for.
    bad = {"buyer_kind": "company", "name": " ", "tax_id": BAD_TAX_ID, "idempotency_key": "k"}
    refused = await call(
        "POST", "/api/v1/claims/{claim_token}", f"/api/v1/claims/{token}", 400, json=bad,
        headers={"Accept-Language": "en"},
    )  # fmt: skip
    assert refused["reason"] == "NAME_REQUIRED"
    assert {name: field["reason"] for name, field in refused["fields"].items()} == {
        "name": "NAME_REQUIRED",
        "tax_id": "INVALID_TAX_ID",
    }
    assert "check character does not match" in refused["fields"]["tax_id"]["message"]
    assert not backends.minting.offers[token].claimed_by_key
    good = {"buyer_kind": "company", "name": "Buyer Co", "tax_id": GOOD_TAX_ID, "idempotency_key": "k"}
    claimed = await call("POST", "/api/v1/claims/{claim_token}", f"/api/v1/claims/{token}", 201, json=good)
    view = claimed["view_token"]
    again = await call("GET", "/api/v1/claims/{claim_token}", f"/api/v1/claims/{token}", 409)
    assert again["reason"] == "ALREADY_CLAIMED"
    pending = await call("GET", "/api/v1/claimed-invoices/{view_token}", f"/api/v1/claimed-invoices/{view}", 200)
    assert pending["buyer"] == {"name": "Buyer Co", "tax_id": GOOD_TAX_ID}
    if pending["status"] == "PENDING":
        not_yet = await call(
            "GET", "/api/v1/claimed-invoices/{view_token}/pdf", f"/api/v1/claimed-invoices/{view}/pdf", 409
        )
        assert not_yet["reason"] == "INVOICE_PENDING"
    await backends.minting.until_issued(backends.minting.offers[token].invoice_id)
    issued = await call("GET", "/api/v1/claimed-invoices/{view_token}", f"/api/v1/claimed-invoices/{view}", 200)
    assert issued["status"] == "ISSUED" and issued["reimbursement_status"] == "NOT_REIMBURSED"
    assert issued["total_amount_fen"] + issued["total_tax_fen"] == issued["total_fen"] == 11200
    pdf = await call("GET", "/api/v1/claimed-invoices/{view_token}/pdf", f"/api/v1/claimed-invoices/{view}/pdf", 200)
    assert pdf.startswith(b"%PDF-")
    number, date = issued["invoice_number"], issued["issue_date"]
    template = "/api/v1/invoices/{invoice_number}/verification"
    genuine = await call("GET", template, f"/api/v1/invoices/{number}/verification?date={date}&total=112.00", 200)
    assert genuine["outcome"] == "GENUINE" and genuine["invoice"]["seller"]["tax_id"] == SELLER.tax_id
    assert genuine["message"] == "已开具、已上链、未报销。", "Chinese unless asked otherwise"
    assert "Buyer Co" not in str(genuine) and GOOD_TAX_ID not in str(genuine)
    wrong = await call("GET", template, f"/api/v1/invoices/{number}/verification?date=20260230&total=abc", 400)
    assert set(wrong["fields"]) == {"date", "total"}
    by_qr = await call(
        "POST", "/api/v1/verifications", "/api/v1/verifications", 200, json={"qr": issued["verification_qr"]}
    )
    assert (by_qr["outcome"], by_qr["source"]) == ("GENUINE", "qr")
    national = "01,32,,23442000000014209621,112,20230215,,74AE"
    elsewhere = await call("POST", "/api/v1/verifications", "/api/v1/verifications", 200, json={"qr": national})
    assert elsewhere["outcome"] == "NOT_ISSUED_HERE" and elsewhere["title"] == "本平台未开具此发票"
    altered = issued["verification_qr"].replace(",112.00,", ",1120.00,")
    refused = await call("POST", "/api/v1/verifications", "/api/v1/verifications", 400, json={"qr": altered})
    assert refused["reason"] == "QR_CHECK_MISMATCH" and refused["fields"]["qr"]["reason"] == "QR_CHECK_MISMATCH"
    assert called == {(method, path) for method, path, _ in ROUTES}, "every operation of the document was called"


async def test_api_errors_are_json_with_reasons(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    raw_json = {"Content-Type": "application/json"}
    claim = {"buyer_kind": "person", "name": "Li Si"}
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("GET", "/api/v1/no/such/route", {}, 404, "NOT_FOUND"),
        ("DELETE", "/api/v1/verifications", {}, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/api/v1/claims/not-a-real-token-0123", {}, 404, "UNKNOWN_TOKEN"),
        ("GET", "/api/v1/claimed-invoices/x.y", {}, 404, "MALFORMED_VIEW_TOKEN"),
        ("POST", "/api/v1/verifications", {"data": b"[1, 2]", "headers": raw_json}, 400, "MALFORMED_JSON"),
        ("POST", "/api/v1/verifications", {"data": b"{", "headers": raw_json}, 400, "MALFORMED_JSON"),
        ("POST", "/api/v1/verifications", {"json": {}}, 400, "VERIFICATION_INPUT_REQUIRED"),
        ("POST", "/api/v1/verifications", {"json": {"qr": "hello"}}, 400, "MALFORMED_QR"),
        ("POST", f"/api/v1/claims/{_offer(backends)}", {"json": claim}, 400, "IDEMPOTENCY_KEY_REQUIRED"),
    ]
    for method, path, kwargs, status, reason in cases:
        async with http.request(method, f"{gateway.url}{path}", **kwargs) as response:
            assert (response.status, response.content_type) == (status, "application/json"), path
            body = await response.json()
        assert body["reason"] == reason and body["message"], (path, body)
    async with http.get(f"{gateway.url}/api/v1/no/such/route", headers={"Accept-Language": "en-GB,en;q=0.9"}) as r:
        assert (await r.json())["message"] == "There is nothing at this address."


async def test_accept_json_on_a_page_route_gets_json(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _offer(backends)
    async with http.get(f"{gateway.url}/claim/{token}", headers=JSON_ACCEPT) as response:
        assert response.content_type == "application/json" and (await response.json())["amount_fen"] == 11200
    async with http.get(f"{gateway.url}/no/such/page", headers=JSON_ACCEPT) as response:
        assert response.status == 404 and (await response.json())["reason"] == "NOT_FOUND"
    async with http.get(f"{gateway.url}/verify", params={"number": "1" * 20, "date": "20261124", "total": "1"},
                        headers=JSON_ACCEPT) as response:  # fmt: skip
        assert (await response.json())["outcome"] == "NOT_ISSUED_HERE"
    form = {"buyer_kind": "person", "name": "", "tax_id": "x", "idempotency_key": "k"}
    async with http.post(f"{gateway.url}/claim/{token}", data=form, headers=JSON_ACCEPT) as response:
        body = await response.json()
    assert response.status == 400 and set(body["fields"]) == {"name", "tax_id"}
    # A browser's Accept (HTML first) gets the page.
    async with http.get(f"{gateway.url}/claim/{token}", headers={"Accept": "text/html,application/json;q=0.9"}) as r:
        assert r.content_type == "text/html"


async def test_api_verification_is_rate_limited_with_retry_after(
    backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    limited = await start_gateway(settings_for(backends, verify_burst=2, verify_per_minute=1.0))
    try:
        answers = []
        for _ in range(3):
            async with http.post(
                f"{limited.url}/api/v1/verifications", json={"qr": verification_qr("1" * 20, 100, "20261124")}
            ) as r:
                answers.append((r.status, (await r.json()).get("reason") or (await r.json()).get("outcome")))
                retry_after = r.headers.get("Retry-After")
        assert answers == [(200, "NOT_ISSUED_HERE"), (200, "NOT_ISSUED_HERE"), (429, "RATE_LIMITED")]
        assert retry_after is not None and int(retry_after) >= 1
    finally:
        await limited.runner.cleanup()


HOSTILE_JSON: dict[str, tuple[bytes, bytes, int, str]] = {
    "deeply nested": (b"", b"[" * 15_000 + b"]" * 15_000, 413, "BODY_TOO_LARGE"),
    "nested within the bound": (b"", b'{"qr":' + b"[" * 8000 + b"]" * 8000 + b"}", 400, "MALFORMED_JSON"),
    "bytes that are not UTF-8": (b"", b'{"qr": "\xff\xfe"}', 400, "MALFORMED_JSON"),
    "another charset": (b"; charset=latin-1", b'{"qr": "x"}', 415, "UNSUPPORTED_CHARSET"),
    "a JSON string": (b"", b'"01,32,,1,2,3,,AAAA"', 400, "MALFORMED_JSON"),
    "a number for the QR": (b"", b'{"qr": 5}', 400, "VERIFICATION_INPUT_REQUIRED"),
    "a big body": (b"", b'{"qr": "' + b"1" * 20_000 + b'"}', 413, "BODY_TOO_LARGE"),
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
async def test_hostile_json_bodies_get_a_4xx_with_their_reason(
    case: str, backends: FakeBackends, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    roomy = await start_gateway(settings_for(backends, verify_burst=1000, verify_per_minute=1000.0))
    charset, body, status, reason = HOSTILE_JSON[case]
    try:
        head = b"POST /api/v1/verifications HTTP/1.1\r\nContent-Type: application/json" + charset
        response = await send_raw(roomy.url, head, body)
        gzipped = await send_raw(roomy.url, head + b"\r\nContent-Encoding: gzip", gzip.compress(body))
    finally:
        await roomy.runner.cleanup()
    assert (response.status, json.loads(response.body)["reason"]) == (status, reason)
    assert (gzipped.status, json.loads(gzipped.body)["reason"]) == (415, "UNSUPPORTED_CONTENT_ENCODING")
    assert_no_traceback(caplog)
