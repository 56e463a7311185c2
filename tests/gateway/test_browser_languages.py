"""Headless Chromium in Chinese and in English (the browser's own language, then the switch on the page):
claim an invoice, see every field error of a bad form at once, verify by number and by national QR codes.

Screenshots land in build/test-artifacts/screenshots/ (claim-page-zh.png is the README's picture).
"""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.conftest import SCREENSHOTS, RunningGateway
from tests.gateway.fake_backends import SELLER, FakeBackends, uscc

pytestmark = pytest.mark.browser

GOOD_TAX_ID = uscc("91440300MA5G2Y3K1")
BAD_TAX_ID = GOOD_TAX_ID[:-1] + ("0" if GOOD_TAX_ID[-1] != "0" else "1")
NATIONAL_QR = "01,32,,23442000000014209621,112,20230215,,74AE"
LEGACY_QR = "01,10,033001900211,69314564,165.05,20200515,04733616525931036327,D2B7,"
# What each language shows: (browser locale, claim title, both field notes, verdicts, date of 20261124).
LANGUAGES = {
    "zh": {
        "locale": "zh-CN",
        "claim": "领取发票",
        "name_error": "请填写购买方名称",
        "tax_error": "纳税人识别号有误",
        "genuine": "真票",
        "elsewhere": "本平台未开具此发票",
        "date": "2026年11月24日",
        "other": "English",
    },
    "en": {
        "locale": "en-US",
        "claim": "Claim your invoice",
        "name_error": "Please enter the buyer name",
        "tax_error": "Invalid tax id",
        "genuine": "Genuine",
        "elsewhere": "Not issued on this network",
        "date": "24 Nov 2026",
        "other": "中文",
    },
}


def _phone(locale: str, **extra: object) -> dict[str, object]:
    return {
        "viewport": {"width": 393, "height": 851},
        "device_scale_factor": 1,
        "is_mobile": True,
        "has_touch": True,
        "locale": locale,
        **extra,
    }


def _offer(backends: FakeBackends) -> str:
    token = uuid.uuid4().hex * 2
    backends.minting.add_offer(token, [("乌龙茶 Oolong tea", 2, 5600), ("月饼 Mooncake", 1, 2800)])
    return token


@pytest.mark.parametrize("lang", list(LANGUAGES))
async def test_claim_and_verify_in_each_language(  # type: ignore[no-untyped-def]
    lang: str, browser, gateway: RunningGateway, backends: FakeBackends
) -> None:
    text = LANGUAGES[lang]
    token = _offer(backends)
    context = await browser.new_context(**_phone(str(text["locale"])))
    page = await context.new_page()
    try:
        await page.goto(f"{gateway.url}/claim/{token}")
        assert await page.get_attribute("html", "lang") == ("zh-CN" if lang == "zh" else "en")
        assert text["claim"] in ((await page.text_content("h1")) or "")
        assert await page.text_content("#offer-amount") == "¥140.00"
        await page.screenshot(path=str(SCREENSHOTS / f"claim-page-{lang}.png"), full_page=True)

        # A bad form: no name and a mistyped tax id; both notes appear at once, before any round trip.
        await page.check("input[name=buyer_kind][value=company]")
        await page.fill("#tax_id", BAD_TAX_ID)
        await page.click("#claim-submit")
        await page.wait_for_selector("#name-error[data-reason=NAME_REQUIRED]")
        await page.wait_for_selector("#tax_id-error[data-reason=INVALID_TAX_ID]")
        assert text["name_error"] in ((await page.text_content("#name-error")) or "")
        assert text["tax_error"] in ((await page.text_content("#tax_id-error")) or "")
        assert await page.get_attribute("#name", "aria-invalid") == "true"
        assert await page.get_attribute("#tax_id", "aria-invalid") == "true"
        assert "/claim/" in page.url and not backends.minting.offers[token].claimed_by_key
        await page.screenshot(path=str(SCREENSHOTS / f"claim-errors-{lang}.png"), full_page=True)

        await page.fill("#name", "深圳市某某科技有限公司" if lang == "zh" else "Acme Travel Ltd")
        await page.fill("#tax_id", GOOD_TAX_ID)
        async with page.expect_navigation():
            await page.click("#claim-submit")
        assert "/invoice/" in page.url
        await page.wait_for_selector("#invoice-status[data-status=ISSUED]", timeout=20_000)
        assert await page.text_content("#issue-date") == text["date"]
        number = (await page.text_content("#invoice-number")) or ""
        qr_content = (await page.text_content("#verification-qr")) or ""
        await page.screenshot(path=str(SCREENSHOTS / f"invoice-issued-{lang}.png"), full_page=True)

        # By number, date and total.
        await page.goto(f"{gateway.url}/verify")
        await page.fill("#number", number)
        await page.fill("#date", "20261124")
        await page.fill("#total", "140.00")
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict[data-outcome=GENUINE]")
        assert text["genuine"] in ((await page.text_content("#verdict")) or "")
        assert await page.text_content("#seller-tax-id") == SELLER.tax_id
        await page.screenshot(path=str(SCREENSHOTS / f"verify-number-{lang}.png"), full_page=True)

        # By QR: Fapiao's own, then national codes of invoices another platform issued.
        for content, outcome in (
            (qr_content, "GENUINE"),
            (NATIONAL_QR, "NOT_ISSUED_HERE"),
            (LEGACY_QR, "NOT_ISSUED_HERE"),
        ):
            await page.goto(f"{gateway.url}/verify")
            await page.fill("#qr", content)
            await page.click("#verify-submit")
            await page.wait_for_selector(f"#verdict[data-outcome={outcome}]")
        assert text["elsewhere"] in ((await page.text_content("#verdict")) or "")
        await page.screenshot(path=str(SCREENSHOTS / f"verify-national-qr-{lang}.png"), full_page=True)

        # The switch on the page changes the language and keeps it.
        await page.click("#lang-switch")
        await page.wait_for_selector(f"#lang-switch:has-text('{'中文' if lang == 'zh' else 'English'}')")
        await page.goto(f"{gateway.url}/verify")
        assert await page.get_attribute("html", "lang") == ("en" if lang == "zh" else "zh-CN")
    finally:
        await context.close()


@pytest.mark.parametrize("lang", list(LANGUAGES))
async def test_every_field_error_at_once_without_javascript(  # type: ignore[no-untyped-def]
    lang: str, browser, gateway: RunningGateway, backends: FakeBackends
) -> None:
    """The server says the same as the script: every field's note, next to it, in the reader's language."""
    text = LANGUAGES[lang]
    token = _offer(backends)
    context = await browser.new_context(**_phone(str(text["locale"]), java_script_enabled=False))
    page = await context.new_page()
    try:
        await page.goto(f"{gateway.url}/claim/{token}")
        await page.check("input[name=buyer_kind][value=company]")
        await page.fill("#tax_id", BAD_TAX_ID)
        await page.click("#claim-submit")
        await page.wait_for_selector("#name-error[data-reason=NAME_REQUIRED]")
        assert await page.get_attribute("#tax_id-error", "data-reason") == "INVALID_TAX_ID"
        assert text["tax_error"] in ((await page.text_content("#tax_id-error")) or "")
        await page.screenshot(path=str(SCREENSHOTS / f"claim-server-errors-{lang}.png"), full_page=True)

        await page.goto(f"{gateway.url}/verify")
        await page.fill("#number", "12345")
        await page.fill("#date", "20261332")
        await page.fill("#total", "abc")
        await page.click("#verify-submit")
        await page.wait_for_selector("#number-error[data-reason=INVALID_INVOICE_NUMBER]")
        assert await page.get_attribute("#date-error", "data-reason") == "INVALID_DATE"
        assert await page.get_attribute("#total-error", "data-reason") == "INVALID_AMOUNT"
        await page.screenshot(path=str(SCREENSHOTS / f"verify-errors-{lang}.png"), full_page=True)
    finally:
        await context.close()
