"""Invoices for the PDF tests, minted by minting's own domain code (lines from a payment, red-letter
lines, body, signature) so that the amounts are those an invoice really holds; and a PDF read back as a
finance clerk sees it: rendered to PNG (pypdfium2; kept under build/invoice-pdf/) and its text
extracted (pdfplumber)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pdfplumber
import pypdfium2
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.ledger_client import SigningKey
from gateway.pdf_form import FORM_WIDTH_MM, LABEL_WIDTH_MM, MARGIN_MM
from invoice_minting.invoice_format import invoice_number
from invoice_minting.signing import build_body, sign_invoice
from invoice_minting.tax import lines_for_payment, red_letter_lines

from tests.gateway.fake_backends import uscc
from tests.support.capitals import read_capitals

OUT = Path(__file__).resolve().parents[2] / "build" / "invoice-pdf"
SELLER = invoice_pb2.Party(
    kind=invoice_pb2.PARTY_KIND_COMPANY, name="深圳市南山区茶楼餐饮有限公司", tax_id=uscc("91440300MA5FX1B81")
)
BUYER = invoice_pb2.Party(
    kind=invoice_pb2.PARTY_KIND_COMPANY, name="深圳市前海数字科技有限公司", tax_id=uscc("91440300MA5G2K7Y3")
)
MEAL = "3070401000000000000"
KEY = SigningKey.generate("issuer-teahouse-1")
LINE = re.compile(
    r"(?P<name>\*[^*\s]+\*\S+) (?P<quantity>-?\d+) (?P<unit_price>\d+\.\d+) (?P<amount>-?\d+\.\d{2}) "
    r"(?P<rate>\d+(?:\.\d+)?%) (?P<tax>-?\d+\.\d{2})"
)


def pt(mm: float) -> float:
    """Millimetres on the form as PDF points (pdfplumber's unit)."""
    return mm * 72 / 25.4


def fen(text: str) -> int:
    return int(Decimal(text.replace("¥", "")) * 100)


def mint(
    number: str,
    lines: list[invoice_pb2.InvoiceLine],
    *,
    original: invoice_pb2.InvoiceBody | None = None,
    status: invoice_pb2.InvoiceStatus.ValueType = invoice_pb2.INVOICE_STATUS_ISSUED,
) -> invoice_pb2.Invoice:
    body = build_body(
        invoice_id=uuid.uuid4(),
        invoice_number=number,
        kind=invoice_pb2.INVOICE_KIND_RED_LETTER if original else invoice_pb2.INVOICE_KIND_ORDINARY,
        seller=SELLER,
        buyer=BUYER,
        lines=lines,
        issue_date="20261208",
        merchant_id="teahouse",
        payment_id="4200002026120812345678",
        region_code="44",
        original_invoice_number=original.invoice_number if original else "",
        red_letter_reason="SALES_RETURN" if original else "",
    )
    return invoice_pb2.Invoice(
        signed=sign_invoice(body, KEY), body=body, status=status, reimbursable_fen=body.total_fen, ledger_height=7
    )


def ordinary() -> invoice_pb2.Invoice:
    """A 142.00 meal: 餐费 1 x 112.00 and 茶位费 3 x 10.00, tax included, at 6%."""
    items = [
        payments_pb2.PaymentItem(
            tax_classification_code=MEAL,
            name=name,
            quantity=n,
            unit_price_fen=price,
            amount_fen=n * price,
            tax_rate_bp=600,
        )
        for name, n, price in (("餐费", 1, 11200), ("茶位费", 3, 1000))
    ]
    lines = lines_for_payment(14200, items, MEAL, "餐饮服务", 600)
    return mint(invoice_number(2026, "44", "0", 1), lines)


def red_letter(original: invoice_pb2.Invoice) -> invoice_pb2.Invoice:
    return mint(invoice_number(2026, "44", "0", 2), red_letter_lines(original.body.lines, 5000), original=original.body)


@dataclass
class ReadBack:
    text: str
    labels: str  # the text of the vertical label columns, top to bottom
    png: Path
    qr_boxes: list[tuple[float, float]]


def read_back(pdf: bytes, name: str) -> ReadBack:
    """Save `pdf` and its first page as PNG under build/, and read its text as a clerk would."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.pdf").write_bytes(pdf)
    document = pypdfium2.PdfDocument(pdf)
    try:
        image = document[0].render(scale=2).to_pil()
    finally:
        document.close()
    png = OUT / f"{name}.png"
    image.save(png)
    # A small copy of the form alone (the top half of the page), as docs/images/invoice-pdf.png shows it.
    small = image.resize((image.width * 7 // 10, image.height * 7 // 10)).crop(
        (0, 0, image.width * 7 // 10, image.height * 7 // 20)
    )
    small.quantize(colors=48).save(OUT / f"{name}-small.png", optimize=True)
    # The page is not blank: the form's brown-red ink and black text are both on it.
    colours = {pixel for _, pixel in image.convert("RGB").getcolors(maxcolors=1 << 20) or []}
    assert any(r > 120 and 40 < g < 100 and b < 70 for r, g, b in colours), "no form ink on the PNG"
    assert (0, 0, 0) in colours
    with pdfplumber.open(OUT / f"{name}.pdf") as document_text:
        page = document_text.pages[0]
        text = "\n".join(p.extract_text() for p in document_text.pages)
        labels = "".join(
            char["text"]
            for left in (MARGIN_MM, MARGIN_MM + FORM_WIDTH_MM / 2)
            for column in [page.crop((pt(left), 0, pt(left + LABEL_WIDTH_MM), page.height))]
            for char in sorted(column.chars, key=lambda c: c["top"])
        )
        qr_boxes = [(image_box["x0"], image_box["top"]) for image_box in page.images]
    return ReadBack(text, labels, png, qr_boxes)


def check_totals(text: str, rows: list[dict[str, str]], body: invoice_pb2.InvoiceBody) -> int:
    """合计 sums the lines; 金额 + 税额 = 价税合计; the capitals spell the figures. Returns 价税合计."""
    totals = re.search(r"合\s*计 ¥(-?\d+\.\d{2}) ¥(-?\d+\.\d{2})", text)
    assert totals is not None
    amount, tax = fen(totals[1]), fen(totals[2])
    assert amount == sum(fen(r["amount"]) for r in rows) == body.total_amount_fen
    assert tax == sum(fen(r["tax"]) for r in rows) == body.total_tax_fen
    grand = re.search(r"价税合计（大写） ⓧ(\S+) （小写） ¥(-?\d+\.\d{2})", text)
    assert grand is not None
    capitals, figures = grand[1], fen(grand[2])
    assert amount + tax == figures == body.total_fen
    assert read_capitals(capitals) == figures
    for row in rows:
        # 单价 × 数量 = 金额, to the unit price's 13 decimals.
        product = Decimal(row["unit_price"]) * int(row["quantity"])
        assert abs(product - Decimal(row["amount"])) <= Decimal("0.5e-13") * abs(int(row["quantity"]))
    return figures
