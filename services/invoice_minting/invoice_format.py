"""Formats of the 数电票: the 20-digit invoice number, the issue date and the verification QR content."""

from __future__ import annotations

import datetime as dt
import re

from fapiao_runtime.money_text import yuan_text
from fapiao_runtime.vocabulary import INVOICE_NUMBER, qr_check_matches, with_qr_check

# China has one time zone without daylight saving; issue dates and number years are Beijing time.
BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
SEQUENCE_DIGITS = 15
MAX_SEQUENCE = 10**SEQUENCE_DIGITS - 1
REGION_CODE = re.compile(r"[0-9]{2}")
CHANNEL_CODE = re.compile(r"[0-9]")
# Kind code of the 数电 ordinary invoice in the QR content.
KIND_ORDINARY = "32"


def beijing_date(at: dt.datetime) -> dt.date:
    """The calendar date in Beijing of the instant `at` (which must be timezone-aware)."""
    assert at.tzinfo is not None
    return at.astimezone(BEIJING).date()


def issue_date_text(day: dt.date) -> str:
    """yyyymmdd."""
    return day.strftime("%Y%m%d")


def invoice_number(year: int, region_code: str, channel: str, sequence: int) -> str:
    """20 digits: 2-digit year, 2-digit region, 1-digit channel, 15-digit sequence (1-based).

    Raises ValueError for a malformed region or channel or a sequence outside 1..10^15-1.
    """
    if not REGION_CODE.fullmatch(region_code):
        raise ValueError("region code must be 2 digits")
    if not CHANNEL_CODE.fullmatch(channel):
        raise ValueError("channel must be 1 digit")
    if not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError("sequence out of range")
    number = f"{year % 100:02d}{region_code}{channel}{sequence:0{SEQUENCE_DIGITS}d}"
    assert INVOICE_NUMBER.fullmatch(number)
    return number


def verification_qr(number: str, total_fen: int, issue_date: str) -> str:
    """ "01,32,,<number>,<价税合计 in yuan, 2 decimals>,<yyyymmdd>,,<4 hex>".

    The invoice code and check code fields are empty for a 数电票. The national check field's algorithm
    is not public; ours is the first 2 bytes of SHA-256 over everything before it (upper-case hex), so a
    reader can detect a mistyped or altered QR content.
    """
    if not INVOICE_NUMBER.fullmatch(number):
        raise ValueError("invoice number must be 20 digits")
    head = f"01,{KIND_ORDINARY},,{number},{yuan_text(total_fen)},{issue_date},,"
    return with_qr_check(head)


def verification_qr_is_consistent(content: str) -> bool:
    """True when the 4-hex check of a QR content string matches the rest of it."""
    return qr_check_matches(content)
