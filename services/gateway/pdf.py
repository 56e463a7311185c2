"""The invoice as a PDF (fpdf2) with its verification QR code (segno PNG).

Fonts: a CJK font is not guaranteed on the machine. The first font found of FAPIAO_PDF_FONT, the usual
Debian CJK fonts (fonts-noto-cjk, fonts-wqy-zenhei, fonts-wqy-microhei, fonts-arphic-uming) and
DejaVu Sans is used; with none, the PDF core font Helvetica (Latin-1). Characters the chosen font
cannot draw are written as their code points, e.g. "张三" -> "[U+5F20][U+4E09]" (lossless, never tofu or
a crash), and the PDF then says so and names the package to install. The signed invoice data, not the
PDF, is authoritative: the verification QR code leads to it.

Rendering takes a good fraction of a second of CPU, so `PdfRenderer` runs it in its own small thread
pool (the event loop keeps serving other requests), lets at most `queue` more downloads wait for a
turn (the rest get `PdfBusy`, a 503 with Retry-After) and keeps the last PDFs rendered in an LRU keyed
by the invoice's version: the digest of the whole Invoice message (body, signature, status, reimbursable
amount, red-letter numbers, ledger position), so a status change renders a new PDF and nothing else does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import segno
from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.admission import AdmissionGate
from fapiao_runtime.errors import Unavailable
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]
from fpdf import FPDF

from gateway.money import yuan_text

log = logging.getLogger(__name__)

CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
LATIN_FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)
STATUS_TEXT = {
    invoice_pb2.INVOICE_STATUS_PENDING: "PENDING",
    invoice_pb2.INVOICE_STATUS_ISSUED: "ISSUED (recorded on the ledger)",
    invoice_pb2.INVOICE_STATUS_REJECTED: "REJECTED by the ledger",
    invoice_pb2.INVOICE_STATUS_CANCELLED: "CANCELLED (red-letter)",
    invoice_pb2.INVOICE_STATUS_PARTIALLY_RED_LETTERED: "PARTIALLY RED-LETTERED",
}


@dataclass(frozen=True)
class PdfFont:
    """A font file (or None for the core font) and the code points it can draw."""

    path: str | None
    codepoints: frozenset[int] = field(repr=False)

    @property
    def has_cjk(self) -> bool:
        return 0x4E2D in self.codepoints  # 中


def _load(path: str) -> PdfFont | None:
    try:
        font = TTFont(path, fontNumber=0, lazy=True)
        cmap = font.getBestCmap() or {}
        font.close()
    except Exception:  # a broken or unsupported font file must not break invoice downloads
        log.warning("cannot use font file %s", path)
        return None
    return PdfFont(path, frozenset(cmap))


@functools.lru_cache(maxsize=4)
def choose_font(preferred: str = "") -> PdfFont:
    """The best available font (see module doc); cached per process."""
    for path in (preferred, *CJK_FONT_CANDIDATES, *LATIN_FONT_CANDIDATES):
        if path and Path(path).is_file():
            font = _load(path)
            if font is not None:
                return font
    return PdfFont(None, frozenset(range(0x20, 0x7F)) | frozenset(range(0xA0, 0x100)))


def drawable(text: str, font: PdfFont) -> tuple[str, bool]:
    """`text` with every character `font` cannot draw replaced by "[U+XXXX]"; and whether any was."""
    out = []
    replaced = False
    for char in text:
        if ord(char) in font.codepoints or char in "\n":
            out.append(char)
        else:
            out.append(f"[U+{ord(char):04X}]")
            replaced = True
    return "".join(out), replaced


class _Writer:
    def __init__(self, font: PdfFont) -> None:
        self.font = font
        self.replaced = False
        self.pdf = FPDF(format="A4", unit="mm")
        self.pdf.set_auto_page_break(auto=True, margin=15)
        self.pdf.add_page()
        self.family = "Helvetica"
        if font.path is not None:
            self.pdf.add_font("invoice", fname=font.path)
            self.family = "invoice"
        self.pdf.set_title("Fapiao invoice")
        self.pdf.set_creator("Fapiao gateway")

    def text(self, value: str) -> str:
        safe, replaced = drawable(value, self.font)
        self.replaced = self.replaced or replaced
        return safe

    def line(self, value: str, size: float = 10, height: float = 6) -> None:
        self.pdf.set_font(self.family, size=size)
        self.pdf.multi_cell(0, height, self.text(value), new_x="LMARGIN", new_y="NEXT")

    def row(self, cells: list[tuple[str, float, str]], size: float = 9) -> None:
        self.pdf.set_font(self.family, size=size)
        for value, width, align in cells:
            text = self.text(value)
            # Cut what does not fit the column rather than overprint the next one.
            while len(text) > 1 and self.pdf.get_string_width(text) > width - 2:
                text = text[:-2] + "…" if self.font.path is not None else text[:-2] + "."
            self.pdf.cell(width, 6, text, border=1, align=align)
        self.pdf.ln(6)


def render_invoice_pdf(invoice: invoice_pb2.Invoice, preferred_font: str = "") -> bytes:
    """PDF bytes of `invoice` (its body as signed, its status and the verification QR code)."""
    body = invoice.body
    writer = _Writer(choose_font(preferred_font))
    title = "Electronic Invoice" + (" 电子发票（普通发票）" if writer.font.has_cjk else " (Fapiao)")
    if body.kind == invoice_pb2.INVOICE_KIND_RED_LETTER:
        title += " - RED-LETTER"
    writer.line(title, size=16, height=9)
    writer.line(f"Invoice number: {body.invoice_number}    Issue date: {body.issue_date}")
    writer.line(f"Status: {STATUS_TEXT.get(invoice.status, 'UNKNOWN')}")
    if invoice.ledger_height:
        writer.line(f"Ledger: chain {invoice.ledger_chain_id}, block {invoice.ledger_height}")
    if body.original_invoice_number:
        writer.line(f"Reverses invoice {body.original_invoice_number} ({body.red_letter_reason})")
    writer.pdf.ln(2)
    writer.line(f"Seller: {body.seller.name}    Tax id: {body.seller.tax_id}")
    writer.line(f"Buyer: {body.buyer.name}    Tax id: {body.buyer.tax_id or '-'}")
    writer.pdf.ln(2)
    widths = (60.0, 14.0, 26.0, 26.0, 14.0, 22.0, 28.0)
    header = ("Item", "Qty", "Unit price", "Amount", "Rate", "Tax", "Total")
    writer.row([(name, w, "C") for name, w in zip(header, widths, strict=True)])
    for item in body.lines:
        values = (
            item.name,
            str(item.quantity),
            yuan_text(item.unit_price_fen),
            yuan_text(item.amount_fen),
            f"{item.tax_rate_bp / 100:g}%",
            yuan_text(item.tax_fen),
            yuan_text(item.total_fen),
        )
        writer.row([(v, w, "L" if i == 0 else "R") for i, (v, w) in enumerate(zip(values, widths, strict=True))])
    writer.pdf.ln(2)
    writer.line(
        f"Amount: {yuan_text(body.total_amount_fen)}    Tax: {yuan_text(body.total_tax_fen)}    "
        f"Total incl. tax: CNY {yuan_text(body.total_fen)}",
        size=11,
    )
    if body.verification_qr:
        png = io.BytesIO()
        segno.make(body.verification_qr, error="m", micro=False).save(png, kind="png", scale=6, border=2)
        png.seek(0)
        writer.pdf.ln(3)
        writer.pdf.image(png, w=40, h=40)
        writer.line(f"Verification QR: {body.verification_qr}", size=8, height=5)
    signature = invoice.signed.signature
    if invoice.signed.body:
        digest = hashlib.sha256(invoice.signed.body).hexdigest()
        writer.line(
            f"Signed by issuer key {signature.key_id} ({signature.algorithm}); body SHA-256 {digest}", size=7, height=4
        )
    writer.line(
        f"Status as of {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; the verification page shows the current one.",
        size=7,
        height=4,
    )
    if writer.replaced:
        writer.line(
            "Note: this server has no font for some characters (e.g. Chinese names); they are written as "
            "[U+XXXX] code points. Install fonts-noto-cjk (or set FAPIAO_PDF_FONT) for full rendering.",
            size=8,
            height=4,
        )
    return bytes(writer.pdf.output())


class PdfBusy(Unavailable):
    """Every render slot is taken and the waiting line is full: try again in a moment (503)."""


def invoice_version(invoice: invoice_pb2.Invoice) -> bytes:
    """What identifies one rendering of `invoice`: any change to the invoice (its status, a red letter,
    its ledger position) changes it."""
    return hashlib.sha256(invoice.SerializeToString(deterministic=True)).digest()


class PdfRenderer:
    """Renders invoice PDFs off the event loop, `renders` at a time, with a bounded wait and an LRU cache.

    At most `renders` PDFs are rendered at once (in this renderer's own threads), at most `queue` more
    requests wait for a slot, and any further one is refused with PdfBusy. Concurrent downloads of one
    invoice version share one rendering. The cache holds at most `cache_entries` PDFs.
    """

    def __init__(
        self,
        preferred_font: str = "",
        *,
        renders: int = 2,
        queue: int = 16,
        cache_entries: int = 128,
        render: Callable[[invoice_pb2.Invoice, str], bytes] | None = None,
    ) -> None:
        if renders <= 0 or queue < 0 or cache_entries < 0:
            raise ValueError("renders must be positive, queue and cache_entries not negative")
        self._font = preferred_font
        self._render = render or render_invoice_pdf
        self._gate = AdmissionGate(
            renders, queue, lambda: PdfBusy("PDF_BUSY", "too many PDFs are being rendered; try again in a moment")
        )
        self._executor = ThreadPoolExecutor(max_workers=renders, thread_name_prefix="pdf")
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_entries = cache_entries
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def render(self, invoice: invoice_pb2.Invoice) -> bytes:
        """The PDF of `invoice`. Raises PdfBusy when the renderer is full."""
        version = invoice_version(invoice)
        cached = self._cache.get(version)
        if cached is not None:
            self._cache.move_to_end(version)
            return cached
        shared = self._inflight.get(version)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[version] = future
        try:
            async with self._gate.enter():
                pdf = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._render, invoice, self._font
                )
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved here: waiters re-raise it, and no one waiting is no warning
            raise
        else:
            future.set_result(pdf)
            if self._cache_entries:
                self._cache[version] = pdf
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
            return pdf
        finally:
            if not future.done():  # cancelled (or refused): those waiting for it get the same
                future.cancel()
            del self._inflight[version]
