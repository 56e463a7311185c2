"""The pages in Simplified Chinese by default and in English on request, from the message catalogue; dates,
money and tax ids as Chinese readers write them; every field error at once; national QR codes."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import aiohttp
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from gateway import i18n
from gateway.i18n import Language, from_accept_language

from tests.gateway.conftest import RunningGateway
from tests.gateway.fake_backends import FakeBackends, uscc
from tests.gateway.ledger_world import verification_qr

pytestmark = pytest.mark.unit

GATEWAY = Path(i18n.__file__).resolve().parent
GOOD_TAX_ID = uscc("91110108MA01ABCD1")
BAD_TAX_ID = GOOD_TAX_ID[:-1] + ("0" if GOOD_TAX_ID[-1] != "0" else "1")
EN = {"Accept-Language": "en-US,en;q=0.9"}


def _offer(backends: FakeBackends) -> str:
    token = uuid.uuid4().hex + uuid.uuid4().hex
    backends.minting.add_offer(token, [("乌龙茶", 2, 56_000), ("月饼", 1, 2800)])
    return token


def _reasons(html: str) -> dict[str, str]:
    return dict(re.findall(r'id="([a-z_]+)-error" data-reason="([A-Z_]+)"', html))


def test_every_message_of_the_templates_and_code_is_translated() -> None:
    """`pybabel extract` with the repository's babel.cfg finds nothing the Chinese catalogue lacks."""
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2.ext.babel_extract")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    keywords = {"N_": None, "_": None, "gettext": None}
    found = list(extract_from_dir(str(GATEWAY), method_map, options, keywords=keywords))
    extracted = {message for _, _, message, _, _ in found}
    assert len(extracted) > 100
    with (GATEWAY / "locale" / "zh" / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalog = read_po(po)
    translated = {message.id for message in catalog if message.id and message.string and not message.fuzzy}
    assert extracted - translated == set()
    # Jinja2 treats a template's translated text as markup: none of it may hold a tag.
    in_templates = {message for path, _, message, _, _ in found if path.endswith(".html")}
    assert not [m.id for m in catalog if m.id in in_templates and ("<" in m.id or "<" in m.string)]
    config = (GATEWAY / "babel.cfg").read_text()
    assert "[python: **.py]" in config and "[jinja2: **/templates/**.html]" in config


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        ("", None),
        ("en-US,en;q=0.9", "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("en;q=0.5, zh-Hans;q=0.8", "zh"),
        ("fr-FR, en;q=0.3", "en"),
        ("de, fr", None),
        ("en;q=abc, zh;q=0", None),
        ("x" * 10_000, None),
        (",;;q=,=,en-" * 500, "en"),
    ],
)
def test_accept_language_is_read_with_its_qualities(header: str, chosen: str | None) -> None:
    assert from_accept_language(header) == chosen


def test_dates_money_and_tax_ids_read_as_chinese_readers_write_them() -> None:
    zh, en = Language("zh"), Language("en")
    assert zh.date("20261208") == "2026年12月08日" and en.date("20261208") == "8 Dec 2026"
    assert zh.date("2026") == "2026" and zh.date("20260230") == "20260230", "not a date: shown as it is"
    assert zh.instant(1_796_895_000) == "2026年12月10日 17:30", "Beijing time"
    assert zh.money(123_450) == en.money(123_450) == "¥1,234.50"
    assert zh.tax_id(" 91440300ma5fx1b81x ") == "91440300MA5FX1B81X"


async def test_chinese_by_default_english_by_header_switch_and_cookie(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _offer(backends)
    async with http.get(f"{gateway.url}/claim/{token}") as response:
        html = await response.text()
    assert response.headers["Content-Language"] == "zh-CN" and '<html lang="zh-CN">' in html
    assert "领取发票" in html and "纳税人识别号" in html and "¥1,148.00" in html
    assert 'id="paid-at">2026年11月24日 17:30<' in html
    assert 'href="?lang=en"' in html, "the switch to English"
    async with http.get(f"{gateway.url}/claim/{token}", headers=EN) as response:
        html = await response.text()
    assert '<html lang="en">' in html and "Claim your invoice" in html and "领取发票" not in html
    assert 'id="paid-at">24 Nov 2026, 17:30<' in html and 'href="?lang=zh"' in html
    # The switch: ?lang= wins over the header and is remembered in a cookie.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{gateway.url}/claim/{token}?lang=en") as response:
            assert "Claim your invoice" in await response.text()
            assert "lang=en" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]
        async with browser.get(f"{gateway.url}/verify") as response:
            assert "Verify an invoice" in await response.text(), "the cookie keeps the language"
        async with browser.get(f"{gateway.url}/verify?lang=zh", headers=EN) as response:
            assert "发票查验" in await response.text()
    async with http.get(f"{gateway.url}/verify?lang=<script>") as response:
        html = await response.text()
    assert response.status == 200 and "<script>" not in html.split("</head>")[1].split("<script")[0]
    assert "Set-Cookie" not in response.headers, "an unknown language is not remembered"


async def test_error_pages_404_and_405_are_in_the_readers_language(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/no/such/page") as response:
        html = await response.text()
    assert response.status == 404 and "页面不存在" in html and 'data-reason="NOT_FOUND"' in html
    assert "404: Not Found" not in html
    async with http.get(f"{gateway.url}/no/such/page", headers=EN) as response:
        assert "Page not found" in await response.text()
    async with http.delete(f"{gateway.url}/verify") as response:
        html = await response.text()
    assert response.status == 405 and "不支持此请求方法" in html and "POST" in response.headers["Allow"]
    async with http.get(f"{gateway.url}/claim/not-a-real-token-0123456789") as response:
        html = await response.text()
    assert response.status == 404 and "领票链接不存在" in html


async def test_every_field_error_of_the_claim_form_is_shown_at_once_next_to_its_field(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _offer(backends)
    claims_before = backends.minting.claim_calls
    form = {"buyer_kind": "company", "name": "", "tax_id": BAD_TAX_ID, "idempotency_key": "k"}
    async with http.post(f"{gateway.url}/claim/{token}", data=form) as response:
        html = await response.text()
    assert response.status == 400
    assert _reasons(html) == {"name": "NAME_REQUIRED", "tax_id": "INVALID_TAX_ID"}
    assert "请填写购买方名称" in html and "纳税人识别号有误：校验码不符（GB 32100-2015）" in html
    assert html.count('aria-invalid="true"') == 2
    form = {"buyer_kind": "alien", "name": "x" * 101, "tax_id": "12", "idempotency_key": ""}
    async with http.post(f"{gateway.url}/claim/{token}", data=form, headers=EN) as response:
        html = await response.text()
    assert _reasons(html) == {
        "buyer_kind": "INVALID_BUYER_KIND",
        "name": "NAME_TOO_LONG",
        "tax_id": "INVALID_TAX_ID",
        "form": "IDEMPOTENCY_KEY_REQUIRED",
    }
    assert "Invalid tax id: tax id must have 18 characters" in html
    assert backends.minting.claim_calls == claims_before, "nothing reached minting"


async def test_hostile_values_are_escaped_in_both_languages(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _offer(backends)
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    for headers in ({}, EN):
        form = {"buyer_kind": "person", "name": hostile * 2, "tax_id": hostile, "idempotency_key": "k"}
        async with http.post(f"{gateway.url}/claim/{token}", data=form, headers=headers) as response:
            html = await response.text()
        assert response.status == 400 and "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        async with http.get(f"{gateway.url}/verify", params={"number": hostile, "qr": ""}, headers=headers) as r:
            html = await r.text()
        assert "<script>alert" not in html and _reasons(html)["number"] == "INVALID_INVOICE_NUMBER"


async def test_every_field_error_of_the_verification_form_is_shown_at_once(
    gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    fields = {"number": "123", "date": "20261332", "total": "1.234"}
    async with http.post(f"{gateway.url}/verify", data=fields) as response:
        html = await response.text()
    assert response.status == 400
    assert _reasons(html) == {"number": "INVALID_INVOICE_NUMBER", "date": "INVALID_DATE", "total": "INVALID_AMOUNT"}
    assert "发票号码有误" in html and "日期有误" in html and "金额有误" in html


@pytest.mark.parametrize(
    "content",
    [
        "01,32,,23442000000014209621,112,20230215,,74AE",  # the national 数电 example
        "01,10,033001900211,69314564,165.05,20200515,04733616525931036327,D2B7,",  # legacy e-ordinary VAT
        "01,04,044031900111,12345678,1000.00,20191231,12345678901234567890,",  # legacy paper, no check field
        "01,31,,26440000000000000999,88.00,20261124,,0000",  # 数电 special, not held here
    ],
)
async def test_a_national_qr_of_an_invoice_fapiao_does_not_hold_is_not_issued_here(
    content: str, gateway: RunningGateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway.url}/verify", data={"qr": content}) as response:
        html = await response.text()
    assert response.status == 200 and 'data-outcome="NOT_ISSUED_HERE"' in html, html[-800:]
    assert "本平台未开具此发票" in html and "mistyped or altered" not in html


async def test_a_fapiao_qr_with_a_wrong_check_field_is_reported_altered(
    gateway: RunningGateway, backends: FakeBackends, http: aiohttp.ClientSession
) -> None:
    token = _offer(backends)
    form = {"buyer_kind": "person", "name": "张三", "tax_id": "", "idempotency_key": "qr"}
    async with http.post(f"{gateway.url}/claim/{token}", data=form, allow_redirects=False) as response:
        assert response.status == 303
    body = (await backends.minting.until_issued(backends.minting.offers[token].invoice_id)).body
    genuine = verification_qr(body.invoice_number, body.total_fen, body.issue_date)
    altered_amount = genuine.replace(",1148.00,", ",11480.00,")
    wrong_check = genuine[:-4] + ("0000" if not genuine.endswith("0000") else "1111")
    for content in (altered_amount, wrong_check):
        async with http.post(f"{gateway.url}/verify", data={"qr": content}) as response:
            html = await response.text()
        assert response.status == 400 and _reasons(html) == {"qr": "QR_CHECK_MISMATCH"}, content
        assert "二维码内容被篡改" in html and 'data-outcome="GENUINE"' not in html
    async with http.post(f"{gateway.url}/verify", data={"qr": genuine}) as response:
        html = await response.text()
    assert 'data-outcome="GENUINE"' in html and "真票" in html
    assert f'data-date="{body.issue_date}">2026年11月24日<' in html and "¥1,148.00" in html
