"""Verification QR content (数电 and legacy VAT invoices) and the fields a person types on the verification page.

The national QR content is comma-separated: version, invoice kind code, invoice code, invoice number,
amount, issue date (yyyymmdd), check code, and a 4-character check field, often with a trailing comma:
- 数电票 (kinds 31 special, 32 ordinary; 51, 61 and others for industry invoices):
  "01,32,,23442000000014209621,112,20230215,,74AE" (no invoice code, no check code, a 20-digit number);
- legacy VAT invoices (01 special, 04 ordinary, 08 e-special, 10 e-ordinary, 11 roll, 14 toll):
  "01,10,033001900211,69314564,165.05,20200515,04733616525931036327,D2B7," (a 10/12-digit code, an
  8-digit number, the tax-excluded amount).
Any such string is read, whatever its check field: the national algorithm of that field is not public.
Fapiao's own check field (invoice_minting.invoice_format) is the first two bytes of SHA-256 over
everything before it, upper-case hex; the verification page checks it only for invoices Fapiao holds,
so an altered Fapiao QR is still found out while another platform's invoice is answered "not issued on
this network".
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass

from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.vocabulary import INVOICE_NUMBER, qr_check

from gateway.money import parse_yuan

MAX_QR_CHARS = 200
LEGACY_NUMBER = re.compile(r"[0-9]{8}")
_VERSION = re.compile(r"[0-9]{2}")
_KIND = re.compile(r"[0-9]{2}")
_CODE = re.compile(r"[0-9]{0,12}")
_CHECK_CODE = re.compile(r"[0-9A-Za-z]{0,32}")
_CHECK_FIELD = re.compile(r"[0-9A-Za-z]{0,8}")
# 32 = 数电 ordinary invoice, 31 = 数电 special VAT invoice: the kinds Fapiao issues.
FAPIAO_KINDS = frozenset({"31", "32"})
QR_SHAPE = "01,<kind>,<code>,<number>,<amount>,<yyyymmdd>,<check code>,<check>"


@dataclass(frozen=True)
class VerificationQuery:
    """What identifies one invoice on the verification page: number, issue date and 价税合计."""

    invoice_number: str
    issue_date: str
    total_fen: int


def parse_invoice_number(text: str) -> str:
    """20 digits (spaces tolerated, full-width digits read as ASCII); raises InvalidArgument with reason
    INVALID_INVOICE_NUMBER."""
    number = re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))
    if not INVOICE_NUMBER.fullmatch(number):
        raise InvalidArgument("INVALID_INVOICE_NUMBER", "the invoice number has 20 digits")
    return number


def parse_issue_date(text: str) -> str:
    """yyyymmdd (or yyyy-mm-dd) of a real calendar day -> yyyymmdd; raises InvalidArgument("INVALID_DATE")."""
    compact = unicodedata.normalize("NFKC", text).strip().replace("-", "")
    if not re.fullmatch(r"[0-9]{8}", compact):
        raise InvalidArgument("INVALID_DATE", "the issue date is yyyymmdd, e.g. 20260215")
    try:
        dt.date(int(compact[:4]), int(compact[4:6]), int(compact[6:]))
    except ValueError:
        raise InvalidArgument("INVALID_DATE", "the issue date is not a calendar date") from None
    return compact


@dataclass(frozen=True)
class QrContent:
    """The fields of a national verification QR code."""

    kind: str
    invoice_code: str
    invoice_number: str
    amount_fen: int
    issue_date: str
    check_code: str
    check_field: str
    head: str

    @property
    def fapiao_shaped(self) -> bool:
        """A 数电 number of a kind Fapiao issues, without invoice code: what a Fapiao QR looks like."""
        return (
            self.kind in FAPIAO_KINDS and not self.invoice_code and bool(INVOICE_NUMBER.fullmatch(self.invoice_number))
        )

    @property
    def fapiao_check_matches(self) -> bool:
        """Whether the check field is Fapiao's check over the rest (only meaningful for Fapiao's invoices)."""
        return qr_check(self.head) == self.check_field.upper()

    @property
    def total_fen(self) -> int:
        """The amount field: 价税合计 on a 数电 QR (a legacy QR states the tax-excluded amount)."""
        return self.amount_fen

    @property
    def query(self) -> VerificationQuery:
        return VerificationQuery(self.invoice_number, self.issue_date, self.amount_fen)


def _malformed(message: str) -> InvalidArgument:
    return InvalidArgument("MALFORMED_QR", message)


def parse_qr_content(content: str) -> QrContent:
    """Read a national verification QR content string (数电 or legacy VAT), whatever its check field.

    Raises InvalidArgument with reason MALFORMED_QR (wrong shape), INVALID_INVOICE_NUMBER, INVALID_AMOUNT
    or INVALID_DATE.
    """
    text = unicodedata.normalize("NFKC", content).strip()
    if len(text) > MAX_QR_CHARS:
        raise _malformed("QR content is too long")
    fields = text.split(",")
    if len(fields) == 9 and fields[8] == "":
        fields = fields[:8]
    if len(fields) == 7:
        fields.append("")
    if len(fields) != 8:
        raise _malformed(f'QR content must look like "{QR_SHAPE}"')
    version, kind, code, number, amount, issue_date, check_code, check = (field.strip() for field in fields)
    if not _VERSION.fullmatch(version) or not _KIND.fullmatch(kind):
        raise _malformed("the QR content starts with a 2-digit version and a 2-digit invoice kind")
    if not _CODE.fullmatch(code) or not _CHECK_CODE.fullmatch(check_code) or not _CHECK_FIELD.fullmatch(check):
        raise _malformed(f'QR content must look like "{QR_SHAPE}"')
    if not (INVOICE_NUMBER.fullmatch(number) or LEGACY_NUMBER.fullmatch(number)):
        raise InvalidArgument("INVALID_INVOICE_NUMBER", "the invoice number has 20 digits (8 on a legacy invoice)")
    head = ",".join((version, kind, code, number, amount, issue_date, check_code)) + ","
    return QrContent(kind, code, number, parse_yuan(amount), parse_issue_date(issue_date), check_code, check, head)


def parse_typed_query(number: str, issue_date: str, total_yuan: str) -> VerificationQuery:
    """The three typed fields; raises InvalidArgument naming the first bad one."""
    return VerificationQuery(parse_invoice_number(number), parse_issue_date(issue_date), parse_yuan(total_yuan))
