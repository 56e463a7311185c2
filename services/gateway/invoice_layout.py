"""What the invoice PDF prints, field by field, in the layout of the 全面数字化的电子发票 (数电票).

Pure: an Invoice message in, the texts of every box out (`InvoiceLayout`); gateway.pdf only draws them.

Lines print as the national form does, tax excluded: 金额 and 税额 are the line's amount_fen and tax_fen
exactly as signed, 单价 = 金额 / 数量 (Decimal arithmetic, never floats). The 数电 platform takes a
unit price with at most 13 decimals (数量 likewise), so 单价 is that quotient rounded half up to 13
decimals, with trailing zeros dropped down to two decimals: 105.66 / 1 -> "105.66", 100.00 / 3 ->
"33.3333333333333", 10.00 / 4 -> "2.50". A red-letter line has a negative 数量 and 金额 and so a
positive 单价, as on the national red-letter form. The 合计 row sums the lines' 金额 and 税额; 价税合计
is their sum, in capitals (fapiao_runtime.money_text) and in figures.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
from dataclasses import dataclass
from decimal import Decimal

from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.money_text import yuan_capitals, yuan_text

# The 数电 platform's limit on the decimals of 单价 and 数量.
UNIT_PRICE_DECIMALS = 13
_UNIT_PRICE_QUANTUM = Decimal(1).scaleb(-UNIT_PRICE_DECIMALS)
# Kind codes of the QR content: 31 is the 数电 special VAT invoice, 32 the ordinary one.
TITLES = {"31": "电子发票（增值税专用发票）", "32": "电子发票（普通发票）"}
DEFAULT_TITLE = TITLES["32"]
# 商品和服务税收分类编码 prefixes and the short category name (简称) the national form prints
# between asterisks before a line's name ("*餐饮服务*餐费"). The longest matching prefix wins; a code
# outside this table prints the name alone.
CATEGORY_SHORT_NAMES = {
    "301": "运输服务",
    "302": "邮政服务",
    "303": "电信服务",
    "304": "现代服务",
    "30401": "研发和技术服务",
    "30402": "信息技术服务",
    "30403": "文化创意服务",
    "30404": "物流辅助服务",
    "30406": "鉴证咨询服务",
    "30407": "广播影视服务",
    "30408": "商务辅助服务",
    "305": "建筑服务",
    "306": "金融服务",
    "307": "生活服务",
    "30701": "文化体育服务",
    "30702": "教育医疗服务",
    "30703": "旅游娱乐服务",
    "3070401": "餐饮服务",
    "3070402": "住宿服务",
    "30705": "居民日常服务",
}
RED_LETTER_REASONS = {
    "ISSUE_ERROR": "开票有误",
    "SALES_RETURN": "销货退回",
    "SERVICE_SUSPENSION": "服务中止",
    "SALES_DISCOUNT": "销售折让",
}
STATUS_TEXT = {
    invoice_pb2.INVOICE_STATUS_PENDING: "待上链",
    invoice_pb2.INVOICE_STATUS_ISSUED: "正常",
    invoice_pb2.INVOICE_STATUS_REJECTED: "未开具（账本拒绝）",
    invoice_pb2.INVOICE_STATUS_CANCELLED: "全额红冲",
    invoice_pb2.INVOICE_STATUS_PARTIALLY_RED_LETTERED: "部分红冲",
}


@dataclass(frozen=True)
class PartyBox:
    """购买方信息 or 销售方信息."""

    heading: str
    name: str
    tax_id: str


@dataclass(frozen=True)
class LineRow:
    """One row of the lines table, every cell as printed."""

    name: str
    specification: str
    unit: str
    quantity: str
    unit_price: str
    amount: str
    tax_rate: str
    tax: str


@dataclass(frozen=True)
class InvoiceLayout:
    title: str
    red_letter: bool
    invoice_number: str
    issue_date: str
    qr_content: str
    buyer: PartyBox
    seller: PartyBox
    lines: tuple[LineRow, ...]
    total_amount: str
    total_tax: str
    total_capitals: str
    total_figures: str
    remarks: tuple[str, ...]
    issuer: str
    footnotes: tuple[str, ...]


def unit_price_text(amount_fen: int, quantity: int) -> str:
    """单价 (tax excluded) = amount / quantity in yuan, to UNIT_PRICE_DECIMALS decimals, half up.

    Trailing zeros are dropped down to two decimals. An empty string when the quantity is zero (a line
    without a quantity prints no unit price on the national form either).
    """
    if quantity == 0:
        return ""
    price = (Decimal(amount_fen).scaleb(-2) / Decimal(quantity)).quantize(
        _UNIT_PRICE_QUANTUM, rounding=decimal.ROUND_HALF_UP, context=decimal.Context(prec=40)
    )
    text = f"{price:f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def tax_rate_text(rate_bp: int) -> str:
    """税率/征收率 as printed: 600 -> "6%", 150 -> "1.5%"."""
    return f"{Decimal(rate_bp).scaleb(-2).normalize():f}%"


def category_short_name(tax_classification_code: str) -> str:
    """The 简称 of a tax classification code (longest prefix in CATEGORY_SHORT_NAMES), or ""."""
    for length in range(len(tax_classification_code), 0, -1):
        short = CATEGORY_SHORT_NAMES.get(tax_classification_code[:length])
        if short is not None:
            return short
    return ""


def item_name(tax_classification_code: str, name: str) -> str:
    """项目名称 as the national form prints it: "*简称*name" (a name already so prefixed is kept)."""
    short = category_short_name(tax_classification_code)
    if not short or name.startswith("*"):
        return name
    return f"*{short}*{name}"


def issue_date_text(yyyymmdd: str) -> str:
    """ "20261208" -> "2026年12月08日"; anything else is printed as it is."""
    if len(yyyymmdd) == 8 and yyyymmdd.isascii() and yyyymmdd.isdigit():
        return f"{yyyymmdd[:4]}年{yyyymmdd[4:6]}月{yyyymmdd[6:]}日"
    return yyyymmdd


def title_of(qr_content: str) -> str:
    """电子发票（普通发票） or 电子发票（增值税专用发票）, from the kind code in the QR content."""
    fields = qr_content.split(",")
    return TITLES.get(fields[1], DEFAULT_TITLE) if len(fields) > 1 else DEFAULT_TITLE


def _red_letter_reason(body: invoice_pb2.InvoiceBody) -> str:
    reason = body.red_letter_reason
    if body.red_letter_reason_code:
        reason = invoice_pb2.RedLetterReason.Name(body.red_letter_reason_code).removeprefix("RED_LETTER_REASON_")
    return RED_LETTER_REASONS.get(reason, reason)


def layout_of(invoice: invoice_pb2.Invoice, now: dt.datetime) -> InvoiceLayout:
    """Every printed field of `invoice` (see the module docstring for the amounts); `now` (aware) is
    when its status was read, printed under the form."""
    body = invoice.body
    red_letter = body.kind == invoice_pb2.INVOICE_KIND_RED_LETTER
    rows = tuple(
        LineRow(
            name=item_name(line.tax_classification_code, line.name),
            specification="",
            unit="",
            quantity=str(line.quantity),
            unit_price=unit_price_text(line.amount_fen, line.quantity),
            amount=yuan_text(line.amount_fen),
            tax_rate=tax_rate_text(line.tax_rate_bp),
            tax=yuan_text(line.tax_fen),
        )
        for line in body.lines
    )
    total_amount_fen = sum(line.amount_fen for line in body.lines)
    total_tax_fen = sum(line.tax_fen for line in body.lines)
    remarks = []
    if red_letter:
        remarks.append(f"被红冲蓝字数电发票号码：{body.original_invoice_number}")
        reason = _red_letter_reason(body)
        if reason:
            remarks.append(f"红冲原因：{reason}")
    if body.payment_id:
        remarks.append(f"订单号：{body.payment_id}")
    if invoice.red_letter_invoice_numbers:
        remarks.append("红字发票号码：" + "、".join(invoice.red_letter_invoice_numbers))
    status = "发票状态：" + STATUS_TEXT.get(invoice.status, "未知")
    if invoice.ledger_height:
        status += f"（账本链 {invoice.ledger_chain_id} 区块 {invoice.ledger_height}）"
    status += f"，截至 {now.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC；查验页面显示当前状态。"
    footnotes = [status]
    if invoice.signed.body:
        digest = hashlib.sha256(invoice.signed.body).hexdigest()
        signature = invoice.signed.signature
        footnotes.append(f"签名：开票方密钥 {signature.key_id}（{signature.algorithm}），发票内容 SHA-256 {digest}")
    return InvoiceLayout(
        title=title_of(body.verification_qr),
        red_letter=red_letter,
        invoice_number=body.invoice_number,
        issue_date=issue_date_text(body.issue_date),
        qr_content=body.verification_qr,
        buyer=PartyBox("购买方信息", body.buyer.name, body.buyer.tax_id),
        seller=PartyBox("销售方信息", body.seller.name, body.seller.tax_id),
        lines=rows,
        total_amount=yuan_text(total_amount_fen),
        total_tax=yuan_text(total_tax_fen),
        total_capitals=yuan_capitals(total_amount_fen + total_tax_fen),
        total_figures=yuan_text(total_amount_fen + total_tax_fen),
        remarks=tuple(remarks),
        issuer=invoice.signed.signature.key_id,
        footnotes=tuple(footnotes),
    )
