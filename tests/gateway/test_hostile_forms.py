"""Hostile form bodies on the claim and verification pages: each gets a 4xx page with its reason (never a
500), after the rate limit, with one log line and no traceback."""

from __future__ import annotations

import gzip
import logging
import re
import uuid
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from fapiao_runtime.errors import InvalidArgument
from gateway.money import parse_yuan

from tests.gateway.conftest import RunningGateway, settings_for, start_gateway
from tests.gateway.fake_backends import FakeBackends
from tests.gateway.raw_http import assert_no_traceback, send_raw

pytestmark = pytest.mark.unit

FORM = "application/x-www-form-urlencoded"
GOOD_VERIFY = b"number=12345678901234567890&date=20261124&total=1.00"
GOOD_CLAIM = b"buyer_kind=person&name=Li+Si&tax_id=&idempotency_key=k1"

# (content type, extra header lines, body) -> (status, reason); body None: the page's own good form.
HOSTILE: dict[str, tuple[str, bytes, bytes | None, int, str]] = {
    "bytes that are not UTF-8": (FORM, b"", b"number=\xff\xfe\x80&name=\xc3", 400, "MALFORMED_FORM"),
    "an unknown charset": (f"{FORM}; charset=x-bogus-42", b"", None, 415, "UNSUPPORTED_CHARSET"),
    "another charset": (f"{FORM}; charset=utf-16", b"", None, 415, "UNSUPPORTED_CHARSET"),
    "gzip": (FORM, b"Content-Encoding: gzip", gzip.compress(GOOD_VERIFY), 415, "UNSUPPORTED_CONTENT_ENCODING"),
    "broken deflate": (FORM, b"Content-Encoding: deflate", b"not deflate", 415, "UNSUPPORTED_CONTENT_ENCODING"),
    "deflate": (FORM, b"Content-Encoding: deflate", zlib.compress(GOOD_VERIFY), 415, "UNSUPPORTED_CONTENT_ENCODING"),
    "brotli": (FORM, b"Content-Encoding: br", b"\x1b\x03\x00", 415, "UNSUPPORTED_CONTENT_ENCODING"),
    "zstd": (FORM, b"Content-Encoding: zstd", b"(\xb5/\xfd", 415, "UNSUPPORTED_CONTENT_ENCODING"),
    "multipart without a name": (
        "multipart/form-data; boundary=zz",
        b"",
        b"--zz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--zz--\r\n",
        400,
        "MALFORMED_FORM",
    ),
    "multipart without a boundary": ("multipart/form-data", b"", b"--zz\r\n\r\nabc", 400, "MALFORMED_FORM"),
    "multipart with a broken part header": (
        "multipart/form-data; boundary=zz",
        b"",
        b"--zz\r\nabc",
        400,
        "MALFORMED_FORM",
    ),
    "multipart part in an unknown charset": (
        "multipart/form-data; boundary=zz",
        b"",
        b'--zz\r\nContent-Disposition: form-data; name="name"\r\nContent-Type: text/plain; charset=x-nope\r\n\r\n'
        b"abc\r\n--zz--\r\n",
        400,
        "MALFORMED_FORM",
    ),
    "not a form": ("text/plain", b"", b"number=1", 415, "UNSUPPORTED_MEDIA_TYPE"),
    "a body over the bound": (FORM, b"", b"name=" + b"x" * 20_000, 413, "BODY_TOO_LARGE"),
}


def _reason(html: str) -> str:
    match = re.search(r'data-reason="([^"]+)"', html)
    return match.group(1) if match else ""


@pytest.fixture(scope="module")
async def roomy(backends: FakeBackends) -> AsyncIterator[RunningGateway]:
    """A gateway whose verification rate limit does not get in the way of many requests from one client."""
    running = await start_gateway(settings_for(backends, verify_burst=1000, verify_per_minute=1000.0))
    try:
        yield running
    finally:
        await running.runner.cleanup()


def _offer(backends: FakeBackends) -> str:
    token = uuid.uuid4().hex
    backends.minting.add_offer(token, [("Oolong tea", 2, 5600)])
    return token


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("page", ["verify", "claim"])
async def test_a_hostile_form_body_gets_a_4xx_with_its_reason(
    page: str, case: str, roomy: RunningGateway, backends: FakeBackends, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    content_type, extra, body, status, reason = HOSTILE[case]
    if body is None:
        body = GOOD_VERIFY if page == "verify" else GOOD_CLAIM
    path = "/verify" if page == "verify" else f"/claim/{_offer(backends)}"
    claims_before = backends.minting.claim_calls
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nContent-Type: " + content_type.encode()
    response = await send_raw(roomy.url, head + (b"\r\n" + extra if extra else b""), body)
    html = response.body.decode()
    assert (response.status, _reason(html)) == (status, reason), html[-600:]
    assert backends.minting.claim_calls == claims_before, "nothing reached minting"
    assert_no_traceback(caplog)


async def test_control_characters_in_fields_are_refused_at_the_edge(
    roomy: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with http.post(f"{roomy.url}/verify", data={"number": "1" * 19 + "\x00", "date": "20261124"}) as response:
        html = await response.text()
    assert response.status == 400
    assert re.search(r'id="number-error" data-reason="INVALID_CHARACTERS"', html), html
    async with http.get(f"{roomy.url}/verify", params={"qr": "01,32,\u202e,1"}) as response:
        html = await response.text()
    assert response.status == 400 and 'id="qr-error" data-reason="INVALID_CHARACTERS"' in html
    claims_before = backends.minting.claim_calls
    form = {"buyer_kind": "person", "name": "Li\x00Si", "tax_id": "", "idempotency_key": "k2"}
    async with http.post(f"{roomy.url}/claim/{_offer(backends)}", data=form) as response:
        html = await response.text()
    assert response.status == 400 and 'data-reason="INVALID_CHARACTERS"' in html
    assert backends.minting.claim_calls == claims_before
    assert_no_traceback(caplog)


async def test_the_rate_limit_comes_before_the_body_is_parsed(backends: FakeBackends) -> None:
    limited = await start_gateway(settings_for(backends, verify_burst=2, verify_per_minute=1.0))
    try:
        statuses = []
        for _ in range(4):
            head = b"POST /verify HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=zz"
            statuses.append((await send_raw(limited.url, head, b"--zz\r\nbroken")).status)
        assert statuses == [400, 400, 429, 429]
        empty = await send_raw(limited.url, b"POST /verify HTTP/1.1\r\nContent-Type: " + FORM.encode())
        assert empty.status == 200, "an empty post is the blank form, not a check"
    finally:
        await limited.runner.cleanup()


async def test_no_form_request_was_a_500(roomy: RunningGateway, http: aiohttp.ClientSession) -> None:
    """Runs after the others in this module: the gateway's own request counter saw no 500."""
    async with http.get(f"{roomy.url}/metrics") as response:
        text = await response.text()
    assert 'route="/verify",status="4' in text
    assert 'status="500"' not in text


async def test_only_ascii_digits_make_a_number_and_full_width_ones_are_read_as_ascii(
    roomy: RunningGateway, http: aiohttp.ClientSession
) -> None:
    """`\\d` takes any script's digits and `$` a final newline: the fields use [0-9] and fullmatch, after
    NFKC (a Chinese input method types full-width digits)."""
    fields = {"number": "١" * 20, "date": "20261124", "total": "1.00"}
    async with http.post(f"{roomy.url}/verify", data=fields) as response:
        html = await response.text()
    assert response.status == 400 and 'id="number-error" data-reason="INVALID_INVOICE_NUMBER"' in html
    full_width = {"number": "１" * 20, "date": "２０２６１１２４", "total": "１.００"}
    async with http.post(f"{roomy.url}/verify", data=full_width) as response:
        html = await response.text()
    assert response.status == 200 and 'data-outcome="NOT_ISSUED_HERE"' in html, "read, looked up, not held"
    assert parse_yuan("１１２.５０") == 11_250 and parse_yuan("￥7.10") == 710
    with pytest.raises(InvalidArgument):
        parse_yuan("١١٢")
