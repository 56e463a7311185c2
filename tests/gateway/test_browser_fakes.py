"""Headless Chromium drives the claim and verification pages (backends: in-process fakes, real signatures).

Screenshots land in build/test-artifacts/screenshots/. The same journey against the real services is
in test_browser_stack.py.
"""

from __future__ import annotations

import uuid

import pytest
from fapiao.ledger.v1 import ledger_pb2

from tests.gateway.conftest import SCREENSHOTS, RunningGateway
from tests.gateway.fake_backends import SELLER, FakeBackends, uscc

pytestmark = pytest.mark.browser

PHONE = {
    "viewport": {"width": 393, "height": 851},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
    "locale": "zh-CN",
}
GOOD_TAX_ID = uscc("91110108MA01ABCD1")
BAD_TAX_ID = GOOD_TAX_ID[:-1] + ("0" if GOOD_TAX_ID[-1] != "0" else "1")


def _offer(backends: FakeBackends) -> str:
    token = uuid.uuid4().hex * 2
    backends.minting.add_offer(token, [("Oolong tea", 2, 5600), ("Mooncake", 1, 2800)])
    return token


async def test_claim_verify_journey_in_the_browser(browser, gateway: RunningGateway, backends: FakeBackends) -> None:  # type: ignore[no-untyped-def]
    token = _offer(backends)
    context = await browser.new_context(**PHONE, accept_downloads=True)
    page = await context.new_page()
    try:
        await page.goto(f"{gateway.url}/claim/{token}")
        assert await page.text_content("#offer-amount") == "¥140.00"
        assert await page.text_content("#merchant-name") == SELLER.name
        await page.check("input[name=buyer_kind][value=company]")
        await page.fill("#name", "Buyer Co")
        await page.fill("#tax_id", BAD_TAX_ID)
        await page.click("#claim-submit")
        # The inline check (GB 32100-2015) stops the submit and says why, next to the field.
        await page.wait_for_selector("#tax_id-error:has-text('校验码不符')")
        assert "/claim/" in page.url
        assert await page.get_attribute("#tax_id", "aria-invalid") == "true"
        await page.screenshot(path=str(SCREENSHOTS / "fake-claim-client-side-error.png"), full_page=True)
        assert not backends.minting.offers[token].claimed_by_key

        await page.fill("#tax_id", GOOD_TAX_ID)
        async with page.expect_navigation():
            await page.click("#claim-submit")
        assert "/invoice/" in page.url and token not in page.url
        assert await page.get_attribute("#invoice-status", "data-status") in ("PENDING", "ISSUED")
        await page.screenshot(path=str(SCREENSHOTS / "fake-invoice-pending.png"), full_page=True)
        # The page refreshes itself while pending.
        await page.wait_for_selector("#invoice-status[data-status=ISSUED]", timeout=20_000)
        number = (await page.text_content("#invoice-number")) or ""
        assert len(number) == 20 and await page.text_content("#invoice-total") == "¥140.00"
        await page.screenshot(path=str(SCREENSHOTS / "fake-invoice-issued.png"), full_page=True)
        async with page.expect_download() as download_info:
            await page.click("#pdf-link")
        download = await download_info.value
        pdf_path = SCREENSHOTS.parent / f"fapiao-{number}.pdf"
        await download.save_as(str(pdf_path))
        assert pdf_path.read_bytes().startswith(b"%PDF-")
        qr_content = (await page.text_content("#verification-qr")) or ""

        await page.goto(f"{gateway.url}/verify")
        await page.fill("#number", number)
        await page.fill("#date", "20261124")
        await page.fill("#total", "140.00")
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict")
        assert await page.get_attribute("#verdict", "data-outcome") == "GENUINE"
        assert await page.text_content("#seller-tax-id") == SELLER.tax_id
        content = await page.content()
        assert "Buyer Co" not in content and GOOD_TAX_ID not in content
        await page.screenshot(path=str(SCREENSHOTS / "fake-verify-genuine.png"), full_page=True)

        await page.fill("#number", "")
        await page.fill("#date", "")
        await page.fill("#total", "")
        await page.fill("#qr", qr_content.replace(",140.00,", ",1400.00,"))
        await page.click("#verify-submit")
        await page.wait_for_selector("#qr-error[data-reason=QR_CHECK_MISMATCH]")
        await page.fill("#qr", qr_content)
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict[data-outcome=GENUINE]")

        # The company reimburses it: the ledger's next receipt says CLOSED.
        invoice_id = backends.minting.offers[token].invoice_id
        backends.world.transition(
            invoice_id, ledger_pb2.TRANSACTION_TYPE_CLOSE, ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED, GOOD_TAX_ID
        )
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict[data-outcome=REIMBURSED]")
        await page.screenshot(path=str(SCREENSHOTS / "fake-verify-reimbursed.png"), full_page=True)

        # A validator that serves a receipt signed by too few validators is not believed.
        record = backends.world.invoices[invoice_id]
        del record.receipt.signatures[2:]
        await page.click("#verify-submit")
        await page.wait_for_selector("#verdict[data-outcome=FORGED]")
        assert "RECEIPT_NO_QUORUM" in ((await page.text_content("#verdict")) or "")
        await page.screenshot(path=str(SCREENSHOTS / "fake-verify-forged.png"), full_page=True)
    finally:
        await context.close()


async def test_server_side_validation_without_javascript(
    browser, gateway: RunningGateway, backends: FakeBackends
) -> None:  # type: ignore[no-untyped-def]
    """With scripts off the form still works; the tax id error comes from minting's INVALID_TAX_ID."""
    token = _offer(backends)
    context = await browser.new_context(**PHONE, java_script_enabled=False)
    page = await context.new_page()
    try:
        await page.goto(f"{gateway.url}/claim/{token}")
        await page.check("input[name=buyer_kind][value=company]")
        await page.fill("#name", "Buyer Co")
        await page.fill("#tax_id", BAD_TAX_ID)
        await page.click("#claim-submit")
        await page.wait_for_selector("#tax_id-error[data-reason=INVALID_TAX_ID]")
        assert "校验码不符" in ((await page.text_content("#tax_id-error")) or "")
        assert await page.input_value("#name") == "Buyer Co", "typed values survive the round trip"
        await page.screenshot(path=str(SCREENSHOTS / "fake-claim-server-side-error.png"), full_page=True)
        await page.fill("#tax_id", GOOD_TAX_ID)
        await page.click("#claim-submit")
        await page.wait_for_selector("#invoice-number")
        assert "/invoice/" in page.url
    finally:
        await context.close()
