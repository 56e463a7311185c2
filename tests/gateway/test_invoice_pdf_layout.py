"""What each box of the invoice PDF holds (gateway.invoice_layout), and how the form copes with long
names, many lines and a machine without a CJK font (gateway.pdf_form)."""

from __future__ import annotations

import datetime as dt
import re

import pdfplumber
import pytest
from fapiao.invoicing.v1 import invoice_pb2
from gateway import pdf as pdf_module
from gateway.invoice_layout import (
    issue_date_text,
    item_name,
    layout_of,
    tax_rate_text,
    title_of,
    unit_price_text,
)
from invoice_minting.tax import MAX_AMOUNT_FEN, make_line

from tests.gateway import minted_invoices as minted

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 8, 1, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("amount_fen", "quantity", "text"),
    [
        (10566, 1, "105.66"),
        (10000, 3, "33.3333333333333"),
        (2, 3, "0.0066666666667"),  # half up at the 13th decimal
        (1000, 4, "2.50"),
        (5, 2, "0.025"),
        (-3721, -1, "37.21"),  # a red-letter line: negative amount and quantity, positive price
        (99_999_999_999_99, 7, "14285714285.7128571428571"),
        (10566, 0, ""),
    ],
)
def test_unit_price_is_the_tax_excluded_amount_per_unit_to_13_decimals(
    amount_fen: int, quantity: int, text: str
) -> None:
    assert unit_price_text(amount_fen, quantity) == text


@pytest.mark.parametrize(("rate_bp", "text"), [(600, "6%"), (0, "0%"), (1300, "13%"), (150, "1.5%")])
def test_tax_rate_prints_as_a_percentage(rate_bp: int, text: str) -> None:
    assert tax_rate_text(rate_bp) == text


@pytest.mark.parametrize(
    ("code", "name", "printed"),
    [
        ("3070401000000000000", "餐费", "*餐饮服务*餐费"),
        ("3070402000000000000", "房费", "*住宿服务*房费"),
        ("3040201000000000000", "软件服务", "*信息技术服务*软件服务"),
        ("3049900000000000000", "服务费", "*现代服务*服务费"),  # the longest known prefix: 304
        ("1090000000000000000", "Oolong tea", "Oolong tea"),  # not in the table: the name alone
        ("", "Oolong tea", "Oolong tea"),
        ("3070401000000000000", "*餐饮服务*餐费", "*餐饮服务*餐费"),  # already prefixed
    ],
)
def test_item_names_carry_their_category_short_name(code: str, name: str, printed: str) -> None:
    assert item_name(code, name) == printed


def test_title_date_and_red_letter_reason_as_the_national_form_prints_them() -> None:
    assert title_of("01,32,,26442000000000000001,112.00,20261208,,74AE") == "电子发票（普通发票）"
    assert title_of("01,31,,26442000000000000001,112.00,20261208,,74AE") == "电子发票（增值税专用发票）"
    assert title_of("") == "电子发票（普通发票）"
    assert issue_date_text("20261208") == "2026年12月08日"
    assert issue_date_text("2026-12-8") == "2026-12-8"
    original = minted.ordinary()
    red = minted.red_letter(original)
    red.body.red_letter_reason = ""  # a reason carried by the enum alone is printed too
    red.body.red_letter_reason_code = invoice_pb2.RED_LETTER_REASON_SERVICE_SUSPENSION
    layout = layout_of(red, NOW)
    assert layout.red_letter
    assert layout.remarks[:2] == (f"被红冲蓝字数电发票号码：{original.body.invoice_number}", "红冲原因：服务中止")
    assert layout.total_capitals == "负伍拾圆整" and layout.total_figures == "-50.00"
    assert "截至 2026-12-08 01:30 UTC" in layout.footnotes[0]


def test_long_names_wrap_and_many_lines_continue_on_the_next_page() -> None:
    if not pdf_module.choose_font().has_cjk:
        pytest.skip("no CJK font on this machine: run `make browser`")
    buyer_name = "深圳市" + "前海深港现代服务业合作区数字经济" * 5 + "有限公司"
    lines = [
        make_line(minted.MEAL, f"第{n}号包间套餐含茶位费与服务费" * 2, n, 1000 * n, 1000 * n, 600) for n in range(1, 61)
    ]
    invoice = minted.mint("26442000000000000003", lines)
    invoice.body.buyer.name = buyer_name
    read = minted.read_back(pdf_module.render_invoice_pdf(invoice), "many-lines")
    with pdfplumber.open(minted.OUT / "many-lines.pdf") as document:
        pages = document.pages
        assert len(pages) >= 2
        # The buyer's box: right of its label column, left of the seller's box, under the header.
        left, right = minted.MARGIN_MM + minted.LABEL_WIDTH_MM, minted.MARGIN_MM + minted.FORM_WIDTH_MM / 2
        buyer_box = pages[0].crop((minted.pt(left), minted.pt(38), minted.pt(right), minted.pt(80))).extract_text()
        assert buyer_name in buyer_box.replace("\n", "").replace("名称：", "")
        for page in pages[:2]:
            assert "项目名称 规格型号 单位 数量 单价 金额 税率/征收率 税额" in page.extract_text()
    names = re.findall(r"\*餐饮服务\*第(\d+)号包间", read.text)
    assert [int(n) for n in names] == list(range(1, 61)), "every line is printed once, in order"
    totals = re.search(r"价税合计（大写） ⓧ(\S+) （小写） ¥(\d+\.\d{2})", read.text)
    assert totals is not None and totals[2] == f"{sum(range(1, 61)) * 10}.00"


def test_without_a_cjk_font_the_pdf_writes_code_points_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdf_module, "CJK_FONT_CANDIDATES", ())
    monkeypatch.setattr(pdf_module, "LATIN_FONT_CANDIDATES", ())
    pdf_module.choose_font.cache_clear()
    try:
        rendered = pdf_module.render_invoice_pdf(minted.ordinary())
    finally:
        pdf_module.choose_font.cache_clear()
    minted.OUT.mkdir(parents=True, exist_ok=True)
    (minted.OUT / "no-cjk-font.pdf").write_bytes(rendered)
    with pdfplumber.open(minted.OUT / "no-cjk-font.pdf") as document:
        text = "\n".join(page.extract_text() for page in document.pages)
    assert "[U+7535][U+5B50][U+53D1][U+7968]" in text  # 电子发票
    assert "105.66" in text and "Install fonts-wqy-microhei" in text.replace("\n", " ")


def test_the_largest_amount_an_invoice_may_hold_fits_its_boxes() -> None:
    if not pdf_module.choose_font().has_cjk:
        pytest.skip("no CJK font on this machine: run `make browser`")
    line = make_line(minted.MEAL, "宴会", 1, MAX_AMOUNT_FEN - 1, MAX_AMOUNT_FEN - 1, 1300)
    invoice = minted.mint("26442000000000000004", [line])
    read = minted.read_back(pdf_module.render_invoice_pdf(invoice), "largest-amount")
    rows = [match.groupdict() for match in minted.LINE.finditer(read.text)]
    assert len(rows) == 1, "the line's cells each fit on one text line"
    assert minted.check_totals(read.text, rows, invoice.body) == MAX_AMOUNT_FEN - 1
    assert "ⓧ玖拾玖亿玖仟玖佰玖拾玖万玖仟玖佰玖拾玖圆玖角玖分 （小写） ¥9999999999.99" in read.text
