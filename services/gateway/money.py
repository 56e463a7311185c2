"""Yuan text <-> integer fen, exactly (no floats anywhere). Figures and capitals come from
fapiao_runtime.money_text (minting writes the same figures into the QR code)."""

from __future__ import annotations

import re
import unicodedata

from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.money_text import yuan_capitals, yuan_text

__all__ = ["MAX_ABS_FEN", "parse_yuan", "yuan_capitals", "yuan_display", "yuan_text"]

# Ten billion fen (一亿元) is far above any single invoice; bigger inputs are typos or probes.
MAX_ABS_FEN = 10**10
_YUAN = re.compile(r"(-?)([0-9]{1,9})(?:\.([0-9]{1,2}))?")


def yuan_display(fen: int) -> str:
    """Human display with thousands separators and the yuan sign: 123456 -> "¥1,234.56"."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"


def parse_yuan(text: str) -> int:
    """Parse "112", "112.5", "112.50", "-3.00" (also with "¥" or thousands commas) into fen.

    Raises InvalidArgument("INVALID_AMOUNT") for anything else: more than two decimals, exponents,
    empty input, or an absolute value above MAX_ABS_FEN. Full-width digits and signs (as a Chinese input
    method types them) count as their ASCII forms.
    """
    cleaned = unicodedata.normalize("NFKC", text).strip().replace(",", "").removeprefix("¥").removeprefix("￥").strip()
    match = _YUAN.fullmatch(cleaned)
    if match is None:
        raise InvalidArgument("INVALID_AMOUNT", "amount must be yuan with at most two decimals, e.g. 112.00")
    sign, whole, decimals = match.groups()
    fen = int(whole) * 100 + int((decimals or "0").ljust(2, "0"))
    if fen > MAX_ABS_FEN:
        raise InvalidArgument("INVALID_AMOUNT", "amount is out of range")
    return -fen if sign else fen
