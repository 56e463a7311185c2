"""Draws an InvoiceLayout as the 数电票 form on an A4 page (fpdf2), with its QR code (segno PNG).

The form, top to bottom: the QR code top-left, the title (电子发票（普通发票）) centred with a double
rule under it, 发票号码 and 开票日期 top-right; then one frame holding 购买方信息 and 销售方信息 side by
side (名称, 统一社会信用代码/纳税人识别号), the lines table (项目名称, 规格型号, 单位, 数量, 单价, 金额,
税率/征收率, 税额) with its 合计 row, 价税合计（大写）and （小写）, and 备注; 开票人 under the frame.
A red-letter invoice carries 红字发票 beside its title and the number it reverses in 备注. Long names
wrap inside their box; a long table continues on the next page with its header repeated.

A character the font cannot draw is written as its code point (see gateway.pdf).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import segno
from fpdf import FPDF
from fpdf.enums import MethodReturnValue, WrapMode
from fpdf.fonts import FontFace

from gateway.invoice_layout import InvoiceLayout, PartyBox

PAGE_WIDTH_MM = 210.0
MARGIN_MM = 10.0
FORM_WIDTH_MM = PAGE_WIDTH_MM - 2 * MARGIN_MM
PARTY_TEXT_PT = 8.5
LABEL_WIDTH_MM = 8.0  # the column holding a box's heading written top to bottom
# The national form's ink: brown-red rules and labels, black content.
FORM_INK = (150, 70, 40)
CONTENT_INK = (0, 0, 0)
RED_LETTER_INK = (200, 0, 0)
LINE_HEADINGS = ("项目名称", "规格型号", "单位", "数量", "单价", "金额", "税率/征收率", "税额")
LINE_WIDTHS_MM = (45.0, 18.0, 11.0, 15.0, 27.0, 27.0, 21.0, 26.0)
LINE_ALIGN = ("LEFT", "LEFT", "CENTER", "RIGHT", "RIGHT", "RIGHT", "CENTER", "RIGHT")
FONT_NOTE = (
    "Note: this server has no font for some characters (e.g. Chinese names); they are written as "
    "[U+XXXX] code points. Install fonts-wqy-microhei or fonts-noto-cjk (or set FAPIAO_PDF_FONT) for "
    "full rendering."
)
assert abs(sum(LINE_WIDTHS_MM) - FORM_WIDTH_MM) < 1e-9


@dataclass(frozen=True)
class PdfFont:
    """A font file (or None for the core font) and the code points it can draw."""

    path: str | None
    codepoints: frozenset[int] = field(repr=False)

    @property
    def has_cjk(self) -> bool:
        return 0x4E2D in self.codepoints  # 中


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


class _Form:
    def __init__(self, font: PdfFont) -> None:
        self.font = font
        self.replaced = False
        self.pdf = FPDF(format="A4", unit="mm")
        self.pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
        self.pdf.set_auto_page_break(auto=True, margin=12)
        self.pdf.add_page()
        self.family = "Helvetica"
        if font.path is not None:
            self.pdf.add_font("invoice", fname=font.path)
            self.family = "invoice"
        self.pdf.set_title("电子发票" if font.has_cjk else "Fapiao invoice")
        self.pdf.set_creator("Fapiao gateway")

    def text(self, value: str) -> str:
        safe, replaced = drawable(value, self.font)
        self.replaced = self.replaced or replaced
        return safe

    def style(self, size: float, ink: tuple[int, int, int] = CONTENT_INK) -> None:
        self.pdf.set_font(self.family, size=size)
        self.pdf.set_text_color(*ink)

    def write_at(self, x: float, y: float, width: float, value: str, align: str = "L", height: float = 5) -> None:
        self.pdf.set_xy(x, y)
        self.pdf.cell(width, height, self.text(value), align=align)

    def wrapped_height(self, width: float, value: str, height: float) -> float:
        lines = self.pdf.multi_cell(
            width, height, self.text(value), dry_run=True, output=MethodReturnValue.LINES, wrapmode=WrapMode.CHAR
        )
        assert isinstance(lines, list)
        return height * max(1, len(lines))

    def wrapped_at(self, x: float, y: float, width: float, value: str, height: float = 4.5) -> None:
        self.pdf.set_xy(x, y)
        self.pdf.multi_cell(width, height, self.text(value), wrapmode=WrapMode.CHAR)

    def vertical_label(self, x: float, y: float, height: float, label: str) -> None:
        """`label` top to bottom, one character a line, centred in a column of the box."""
        self.style(9, FORM_INK)
        step = min(5.0, height / max(1, len(label)))
        top = y + (height - step * len(label)) / 2
        for index, char in enumerate(label):
            self.write_at(x, top + index * step, LABEL_WIDTH_MM, char, align="C", height=step)
        self.pdf.set_draw_color(*FORM_INK)
        self.pdf.line(x + LABEL_WIDTH_MM, y, x + LABEL_WIDTH_MM, y + height)


def _header(form: _Form, layout: InvoiceLayout) -> None:
    pdf = form.pdf
    if layout.qr_content:
        png = io.BytesIO()
        segno.make(layout.qr_content, error="m", micro=False).save(png, kind="png", scale=4, border=1)
        png.seek(0)
        pdf.image(png, x=MARGIN_MM, y=MARGIN_MM, w=24, h=24)
    form.style(18, FORM_INK)
    title = form.text(layout.title)
    title_width = pdf.get_string_width(title)
    title_x = (PAGE_WIDTH_MM - title_width) / 2
    form.write_at(title_x, MARGIN_MM + 4, title_width, layout.title, height=9)
    pdf.set_draw_color(*FORM_INK)
    for offset in (14.0, 15.0):
        pdf.line(title_x, MARGIN_MM + offset, title_x + title_width, MARGIN_MM + offset)
    if layout.red_letter:
        form.style(11, RED_LETTER_INK)
        form.write_at(title_x, MARGIN_MM + 17, title_width, "红字发票", align="C")
    form.style(9, FORM_INK)
    for row, (label, value) in enumerate((("发票号码：", layout.invoice_number), ("开票日期：", layout.issue_date))):
        y = MARGIN_MM + 6 + 6 * row
        form.write_at(145, y, 17, label)
        form.style(9)
        form.write_at(162, y, 38, value)
        form.style(9, FORM_INK)


def _parties(form: _Form, top: float, boxes: tuple[PartyBox, PartyBox]) -> float:
    """The buyer and seller boxes side by side from `top`; returns their bottom."""
    half = FORM_WIDTH_MM / 2
    inner = half - LABEL_WIDTH_MM - 3
    form.style(PARTY_TEXT_PT)
    contents = [(f"名称：{box.name}", f"统一社会信用代码/纳税人识别号：{box.tax_id}") for box in boxes]
    height = max(3 + sum(form.wrapped_height(inner, part, 4.2) for part in parts) + 3 for parts in contents)
    height = max(height, 22.0)
    for index, (box, parts) in enumerate(zip(boxes, contents, strict=True)):
        left = MARGIN_MM + index * half
        form.vertical_label(left, top, height, box.heading)
        y = top + 3
        for part in parts:
            form.style(PARTY_TEXT_PT)
            form.wrapped_at(left + LABEL_WIDTH_MM + 1.5, y, inner, part, height=4.2)
            y += form.wrapped_height(inner, part, 4.2)
    form.pdf.set_draw_color(*FORM_INK)
    form.pdf.rect(MARGIN_MM, top, FORM_WIDTH_MM, height)
    form.pdf.line(MARGIN_MM + half, top, MARGIN_MM + half, top + height)
    return top + height


def _lines(form: _Form, top: float, layout: InvoiceLayout) -> None:
    """The lines table and its 合计 row, from `top`; continues on new pages with its header."""
    pdf = form.pdf
    pdf.set_xy(MARGIN_MM, top)
    pdf.set_draw_color(*FORM_INK)
    form.style(8.5)
    headings = FontFace(emphasis="", color=FORM_INK, size_pt=8)
    with pdf.table(
        width=FORM_WIDTH_MM,
        col_widths=LINE_WIDTHS_MM,
        align="LEFT",
        borders_layout="NO_HORIZONTAL_LINES",
        line_height=5,
        headings_style=headings,
        wrapmode=WrapMode.CHAR,
        padding=(1, 1),
        v_align="TOP",
    ) as table:
        heading = table.row()
        for name in LINE_HEADINGS:
            heading.cell(form.text(name), align="CENTER")
        for line in layout.lines:
            cells = (
                line.name, line.specification, line.unit, line.quantity,
                line.unit_price, line.amount, line.tax_rate, line.tax,
            )  # fmt: skip
            row = table.row()
            for value, align in zip(cells, LINE_ALIGN, strict=True):
                row.cell(form.text(value), align=align)
        totals = table.row(style=FontFace(emphasis="", color=CONTENT_INK))
        totals.cell(form.text("合　　计"), align="CENTER", colspan=5)
        totals.cell(form.text(f"¥{layout.total_amount}"), align="RIGHT")
        totals.cell("")
        totals.cell(form.text(f"¥{layout.total_tax}"), align="RIGHT")


def _grand_total(form: _Form, layout: InvoiceLayout) -> None:
    pdf = form.pdf
    top = pdf.get_y()
    if top + 9 > pdf.page_break_trigger:
        pdf.add_page()
        top = pdf.get_y()
    pdf.set_draw_color(*FORM_INK)
    pdf.rect(MARGIN_MM, top, FORM_WIDTH_MM, 9)
    pdf.line(MARGIN_MM + 40, top, MARGIN_MM + 40, top + 9)
    form.style(9, FORM_INK)
    form.write_at(MARGIN_MM, top + 2, 40, "价税合计（大写）", align="C")
    capitals = f"ⓧ{layout.total_capitals}"
    size = 10.0
    form.style(size)
    while size > 6 and pdf.get_string_width(form.text(capitals)) > 95:  # the longest amounts
        size -= 0.5
        form.style(size)
    form.write_at(MARGIN_MM + 43, top + 2, 95, capitals)
    form.style(9, FORM_INK)
    form.write_at(MARGIN_MM + 140, top + 2, 16, "（小写）")
    form.style(10)
    form.write_at(MARGIN_MM + 156, top + 2, 34, f"¥{layout.total_figures}")
    pdf.set_xy(MARGIN_MM, top + 9)


def _remarks(form: _Form, layout: InvoiceLayout) -> None:
    pdf = form.pdf
    inner = FORM_WIDTH_MM - LABEL_WIDTH_MM - 3
    text = "\n".join(layout.remarks)
    form.style(9)
    height = max(18.0, 4 + form.wrapped_height(inner, text, 4.5))
    top = pdf.get_y()
    if top + height > pdf.page_break_trigger:
        pdf.add_page()
        top = pdf.get_y()
    form.vertical_label(MARGIN_MM, top, height, "备注")
    pdf.set_draw_color(*FORM_INK)
    pdf.rect(MARGIN_MM, top, FORM_WIDTH_MM, height)
    form.style(9, RED_LETTER_INK if layout.red_letter else CONTENT_INK)
    form.wrapped_at(MARGIN_MM + LABEL_WIDTH_MM + 1.5, top + 2, inner, text)
    pdf.set_xy(MARGIN_MM, top + height + 2)


def _footer(form: _Form, layout: InvoiceLayout) -> None:
    pdf = form.pdf
    y = pdf.get_y()
    form.style(9, FORM_INK)
    form.write_at(MARGIN_MM + 4, y, 16, "开票人：")
    form.style(9)
    form.write_at(MARGIN_MM + 20, y, 100, layout.issuer)
    pdf.set_xy(MARGIN_MM, y + 8)
    form.style(7, (90, 90, 90))
    for note in layout.footnotes:
        pdf.multi_cell(0, 3.5, form.text(note), wrapmode=WrapMode.CHAR, new_x="LMARGIN", new_y="NEXT")
    if form.replaced:
        form.style(8)
        pdf.multi_cell(0, 4, FONT_NOTE, new_x="LMARGIN", new_y="NEXT")


def draw_form(layout: InvoiceLayout, font: PdfFont) -> bytes:
    """PDF bytes of `layout` drawn with `font` (see the module docstring for the form)."""
    form = _Form(font)
    _header(form, layout)
    bottom = _parties(form, MARGIN_MM + 28, (layout.buyer, layout.seller))
    _lines(form, bottom, layout)
    _grand_total(form, layout)
    _remarks(form, layout)
    _footer(form, layout)
    return bytes(form.pdf.output())
