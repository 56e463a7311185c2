"""The invoice PDF in the national 数电票 layout, read back as a finance clerk sees it: rendered to PNG
(kept under build/invoice-pdf/) and its text extracted to find every field of the form."""

from __future__ import annotations

import pytest
from gateway.pdf import choose_font, render_invoice_pdf

from tests.gateway.minted_invoices import BUYER, LINE, SELLER, check_totals, fen, ordinary, read_back, red_letter

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", autouse=True)
def cjk_font() -> None:
    if not choose_font().has_cjk:
        pytest.skip("no CJK font on this machine: run `make browser` (installs fonts-wqy-microhei)")


def test_the_pdf_shows_every_field_of_the_national_layout() -> None:
    invoice = ordinary()
    read = read_back(render_invoice_pdf(invoice), "ordinary")
    text, body = read.text, invoice.body
    assert text.splitlines()[0] == "电子发票（普通发票）"
    assert "红字发票" not in text
    assert f"发票号码： {body.invoice_number}" in text
    assert "开票日期： 2026年12月08日" in text
    assert read.qr_boxes and read.qr_boxes[0][0] < 40 and read.qr_boxes[0][1] < 40, "the QR code is top-left"
    assert "购买方信息" in read.labels and "销售方信息" in read.labels and "备注" in read.labels
    for party in (BUYER, SELLER):
        assert f"名称：{party.name}" in text
        assert f"统一社会信用代码/纳税人识别号：{party.tax_id}" in text
    assert "项目名称 规格型号 单位 数量 单价 金额 税率/征收率 税额" in text
    rows = [match.groupdict() for match in LINE.finditer(text)]
    assert [row["name"] for row in rows] == ["*餐饮服务*餐费", "*餐饮服务*茶位费"]
    # Unit price and amount are both tax-excluded: 112.00 incl. 6% is 105.66 + 6.34, and 30.00 is
    # 28.30 + 1.70 for three, each 28.30 / 3 = 9.4333333333333 (13 decimals, half up).
    assert [(r["quantity"], r["unit_price"], r["amount"], r["rate"], r["tax"]) for r in rows] == [
        ("1", "105.66", "105.66", "6%", "6.34"),
        ("3", "9.4333333333333", "28.30", "6%", "1.70"),
    ]
    for row, line in zip(rows, body.lines, strict=True):
        assert (fen(row["amount"]), fen(row["tax"])) == (line.amount_fen, line.tax_fen)
    check_totals(text, rows, body)
    remarks = text[text.index("（小写）") :]
    assert f"订单号：{body.payment_id}" in remarks
    assert "开票人： issuer-teahouse-1" in text
    assert "发票状态：正常（账本链 0 区块 7）" in text


def test_a_red_letter_pdf_says_so_and_names_the_invoice_it_reverses() -> None:
    original = ordinary()
    invoice = red_letter(original)
    read = read_back(render_invoice_pdf(invoice), "red-letter")
    text, body = read.text, invoice.body
    assert text.splitlines()[0] == "电子发票（普通发票）" and "红字发票" in text
    assert f"被红冲蓝字数电发票号码：{original.body.invoice_number}" in text
    assert "红冲原因：销货退回" in text
    rows = [match.groupdict() for match in LINE.finditer(text)]
    # 50.00 of 142.00 reversed in proportion to the lines (largest remainder): each part is one unit
    # reversed (数量 -1) at a positive unit price, 金额 and 税额 negative.
    assert [r["quantity"] for r in rows] == ["-1", "-1"]
    for row, line in zip(rows, body.lines, strict=True):
        assert fen(row["amount"]) == line.amount_fen < 0 and fen(row["tax"]) == line.tax_fen <= 0
        assert fen(row["unit_price"]) == -line.amount_fen
    total = check_totals(text, rows, body)
    assert total == -5000 and "ⓧ负伍拾圆整" in text
