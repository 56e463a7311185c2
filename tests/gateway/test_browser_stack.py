"""The claim and verification pages in headless Chromium against the REAL services.

payment notification -> gateway webhook -> payment_intake -> invoice_minting offer (QR URL) -> the
phone page claims it (a bad tax id first, refused by minting's validation) -> the ledger's 4
validators commit it -> the page turns ISSUED, the PDF downloads -> the public verification page says
genuine, then reimbursement-free checks show no buyer data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_stack.harness import StackUnderTest

from tests.gateway.conftest import SCREENSHOTS
from tests.gateway.realstack import MERCHANT_NAME, MERCHANT_TAX_ID, RealStack

pytestmark = pytest.mark.browser

PHONE = {"viewport": {"width": 393, "height": 851}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
BUYER_TAX_ID = "91110108MA01ABCD1" + uscc_check_char("91110108MA01ABCD1")
BAD_TAX_ID = BUYER_TAX_ID[:-1] + ("0" if BUYER_TAX_ID[-1] != "0" else "1")


@pytest.fixture
async def real_stack(stack: StackUnderTest) -> AsyncIterator[RealStack]:
    running = RealStack(stack)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


async def test_claim_and_verify_against_the_real_services(browser, real_stack: RealStack) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http:
        payment_id = await real_stack.pay_through_gateway(http, total_fen=8_800)
    claim_url = await real_stack.claim_url(payment_id)
    assert claim_url.startswith(f"{real_stack.gateway_url}/claim/")

    # Without JavaScript: the bad tax id reaches minting, whose INVALID_TAX_ID shows next to the field.
    context = await browser.new_context(**PHONE, java_script_enabled=False)
    page = await context.new_page()
    try:
        await page.goto(claim_url)
        assert await page.text_content("#offer-amount") == "¥88.00"
        assert await page.text_content("#merchant-name") == MERCHANT_NAME
        await page.check("input[name=buyer_kind][value=company]")
        await page.fill("#name", "Acme Travel Ltd")
        await page.fill("#tax_id", BAD_TAX_ID)
        await page.click("#claim-submit")
        await page.wait_for_selector("#tax_id-error[data-reason=INVALID_TAX_ID]")
        await page.screenshot(path=str(SCREENSHOTS / "stack-claim-invalid-tax-id.png"), full_page=True)
    finally:
        await context.close()

    context = await browser.new_context(**PHONE, accept_downloads=True)
    page = await context.new_page()
    try:
        await page.goto(claim_url)
        await page.screenshot(path=str(SCREENSHOTS / "stack-claim-offer.png"), full_page=True)
        await page.check("input[name=buyer_kind][value=company]")
        await page.fill("#name", "Acme Travel Ltd")
        await page.fill("#tax_id", BUYER_TAX_ID)
        async with page.expect_navigation():
            await page.click("#claim-submit")
        assert "/invoice/" in page.url
        await page.wait_for_selector("#invoice-status[data-status=ISSUED]", timeout=45_000)
        number = (await page.text_content("#invoice-number")) or ""
        issue_date = (await page.get_attribute("#issue-date", "data-date")) or ""
        assert len(number) == 20 and len(issue_date) == 8
        assert await page.text_content("#invoice-total") == "¥88.00"
        await page.screenshot(path=str(SCREENSHOTS / "stack-invoice-issued.png"), full_page=True)
        async with page.expect_download() as download_info:
            await page.click("#pdf-link")
        pdf_path = SCREENSHOTS.parent / f"stack-fapiao-{number}.pdf"
        await (await download_info.value).save_as(str(pdf_path))
        assert pdf_path.read_bytes().startswith(b"%PDF-")
        qr_content = (await page.text_content("#verification-qr")) or ""
        assert qr_content.startswith(f"01,32,,{number},88.00,{issue_date},,")

        await page.goto(f"{real_stack.gateway_url}/verify")
        await page.fill("#number", number)
        await page.fill("#date", issue_date)
        await page.fill("#total", "88")
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict")
        assert await page.get_attribute("#verdict", "data-outcome") == "GENUINE", await page.text_content("#verdict")
        assert await page.text_content("#seller-tax-id") == MERCHANT_TAX_ID
        content = await page.content()
        assert "Acme Travel" not in content and BUYER_TAX_ID not in content
        await page.screenshot(path=str(SCREENSHOTS / "stack-verify-genuine.png"), full_page=True)

        await page.goto(f"{real_stack.gateway_url}/verify")
        await page.fill("#number", number)
        await page.fill("#date", issue_date)
        await page.fill("#total", "880.00")
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict[data-outcome=NO_MATCH]")
        await page.screenshot(path=str(SCREENSHOTS / "stack-verify-no-match.png"), full_page=True)

        await page.goto(f"{real_stack.gateway_url}/verify")
        await page.fill("#qr", qr_content)
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict[data-outcome=GENUINE]")
    except Exception:
        print(real_stack.logs())
        raise
    finally:
        await context.close()
