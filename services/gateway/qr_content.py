"""The verification QR content of a 数电票 and the fields a person types on the verification page.

QR content: "01,<kind>,<code>,<number>,<total yuan, 2 decimals>,<yyyymmdd>,<check code>,<4 hex>".
For a 数电票 the invoice code and check code are empty. The national algorithm of the trailing 4-hex
field is not public; Fapiao's (see invoice_minting.invoice_format) is the first two bytes of SHA-256
over everything before it, upper-case hex, so a mistyped or altered content string is detected here.
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
# 32 = 数电 ordinary invoice, 31 = 数电 special VAT invoice.
KNOWN_KINDS = frozenset({"31", "32"})


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


def parse_qr_content(content: str) -> VerificationQuery:
    """Parse a verification QR content string.

    Raises InvalidArgument with reason MALFORMED_QR (wrong shape or kind), QR_CHECK_MISMATCH (the 4-hex
    check does not match: mistyped or altered), INVALID_INVOICE_NUMBER, INVALID_AMOUNT or INVALID_DATE.
    """
    text = content.strip()
    if len(text) > MAX_QR_CHARS:
        raise InvalidArgument("MALFORMED_QR", "QR content is too long")
    fields = text.split(",")
    if len(fields) != 8 or fields[0] != "01":
        raise InvalidArgument(
            "MALFORMED_QR", 'QR content must look like "01,32,,<number>,<amount>,<yyyymmdd>,,<check>"'
        )
    _version, kind, _code, number, amount, issue_date, _check_code, check = fields
    if kind not in KNOWN_KINDS:
        raise InvalidArgument("MALFORMED_QR", f"unknown invoice kind {kind[:4]!r}")
    head = text[: len(text) - len(check)]
    if not re.fullmatch(r"[0-9A-Fa-f]{4}", check) or qr_check(head) != check.upper():
        raise InvalidArgument("QR_CHECK_MISMATCH", "the QR check field does not match: mistyped or altered")
    return VerificationQuery(parse_invoice_number(number), parse_issue_date(issue_date), parse_yuan(amount))


def parse_typed_query(number: str, issue_date: str, total_yuan: str) -> VerificationQuery:
    """The three typed fields; raises InvalidArgument naming the first bad one."""
    return VerificationQuery(parse_invoice_number(number), parse_issue_date(issue_date), parse_yuan(total_yuan))
