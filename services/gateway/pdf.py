"""The invoice as a PDF in the national layout of the 数电票 (gateway.invoice_layout says what each box
holds, gateway.pdf_form draws it with fpdf2), with its verification QR code.

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
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.admission import AdmissionGate
from fapiao_runtime.errors import Unavailable
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

from gateway.invoice_layout import layout_of
from gateway.pdf_form import PdfFont, draw_form, drawable

__all__ = ["PdfBusy", "PdfFont", "PdfRenderer", "choose_font", "drawable", "invoice_version", "render_invoice_pdf"]

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


def render_invoice_pdf(invoice: invoice_pb2.Invoice, preferred_font: str = "") -> bytes:
    """PDF bytes of `invoice` in the national layout (gateway.invoice_layout, gateway.pdf_form): its
    body as signed, the verification QR code, and under the form its status and signature."""
    return draw_form(layout_of(invoice, dt.datetime.now(dt.UTC)), choose_font(preferred_font))


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
