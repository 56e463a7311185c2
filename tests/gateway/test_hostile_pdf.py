"""Invoice PDFs under a crowd of downloads: rendered off the event loop, a bounded number at once with a
bounded wait (then 503 with Retry-After), and cached per invoice version."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import gateway.pdf
import pytest
from fapiao.invoicing.v1 import invoice_pb2
from gateway.view_tokens import ViewTokens

from tests.gateway.conftest import TEST_SECRET, settings_for, start_gateway
from tests.gateway.fake_backends import SELLER, FakeBackends

pytestmark = pytest.mark.unit


@dataclass
class CountedRenders:
    """Wraps the real renderer: counts renders and how many run at once; `gate` holds them until set."""

    gate: threading.Event = field(default_factory=threading.Event)
    started: int = 0
    running: int = 0
    peak: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, invoice: invoice_pb2.Invoice, font: str) -> bytes:
        with self._lock:
            self.started += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.gate.wait(60)
            return REAL_RENDER(invoice, font)
        finally:
            with self._lock:
                self.running -= 1


REAL_RENDER = gateway.pdf.render_invoice_pdf


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountedRenders]:
    counted = CountedRenders()
    monkeypatch.setattr(gateway.pdf, "render_invoice_pdf", counted)
    yield counted
    counted.gate.set()


def _issued(backends: FakeBackends, name: str) -> str:
    """A new issued invoice in the fake minting; returns a view token for it."""
    invoice = backends.world.build_invoice(
        merchant_id="m1",
        seller=SELLER,
        buyer=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name=name),
        lines=[
            invoice_pb2.InvoiceLine(
                tax_classification_code="3070401000000000000",
                name="Oolong tea",
                quantity=1,
                unit_price_fen=10_600,
                amount_fen=10_000,
                tax_rate_bp=600,
                tax_fen=600,
                total_fen=10_600,
            )
        ],
        issue_date="20261124",
    )
    invoice.status = invoice_pb2.INVOICE_STATUS_ISSUED
    backends.minting.invoices[invoice.body.invoice_id] = invoice
    return ViewTokens(TEST_SECRET, 3600).issue(invoice.body.invoice_id)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def test_a_crowd_of_downloads_is_bounded_and_health_still_answers(
    backends: FakeBackends, renders: CountedRenders
) -> None:
    running = await start_gateway(settings_for(backends, pdf_renders=2, pdf_queue=8))
    try:
        tokens = [_issued(backends, f"Buyer {n}") for n in range(12)]
        async with aiohttp.ClientSession() as http:
            downloads = [asyncio.ensure_future(_get(http, f"{running.url}/invoice/{t}/pdf")) for t in tokens]
            # Two renders start and are held; eight wait; two are refused at once.
            for _ in range(600):
                if renders.started >= 2 and sum(d.done() for d in downloads) >= 2:
                    break
                await asyncio.sleep(0.05)
            status, _, body = await _get(http, f"{running.url}/healthz")
            assert status == 200 and b"SERVING" in body
            assert sum(d.done() for d in downloads) == 2, "the renders held are not complete, health answered"
            assert renders.started == 2
            renders.gate.set()
            results = await asyncio.gather(*downloads)
    finally:
        await running.runner.cleanup()
    refused = [(s, h) for s, h, _ in results if s != 200]
    assert len(refused) == 2
    for status, headers in refused:
        assert status == 503 and int(headers["Retry-After"]) >= 1
    assert all(body.startswith(b"%PDF-") for s, _, body in results if s == 200)
    assert renders.started == 10 and renders.peak == 2


async def test_pdfs_are_cached_per_invoice_version(backends: FakeBackends, renders: CountedRenders) -> None:
    renders.gate.set()
    running = await start_gateway(settings_for(backends))
    token = _issued(backends, "Wang Wu")
    invoice_id = ViewTokens(TEST_SECRET, 3600).open(token)
    url = f"{running.url}/invoice/{token}/pdf"
    try:
        async with aiohttp.ClientSession() as http:
            first = await _get(http, url)
            second = await _get(http, url)
            assert first[0] == second[0] == 200 and first[2] == second[2]
            assert renders.started == 1, "the same version is rendered once"
            # A status change is a new version: a new PDF. Concurrent downloads of it share one render.
            cancelled = invoice_pb2.Invoice()
            cancelled.CopyFrom(backends.minting.invoices[invoice_id])
            cancelled.status = invoice_pb2.INVOICE_STATUS_CANCELLED
            backends.minting.invoices[invoice_id] = cancelled
            crowd = await asyncio.gather(*(_get(http, url) for _ in range(5)))
    finally:
        await running.runner.cleanup()
    assert {status for status, _, _ in crowd} == {200}
    assert len({body for _, _, body in crowd}) == 1 and crowd[0][2] != first[2]
    assert renders.started == 2
