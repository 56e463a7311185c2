"""Reads an amount in capitals (壹佰零伍圆陆角陆分) back to fen, written apart from
fapiao_runtime.money_text so that tests compare two independent readings of one amount."""

from __future__ import annotations

DIGIT_OF = {char: value for value, char in enumerate("零壹贰叁肆伍陆柒捌玖")}
PLACE_OF = {"拾": 10, "佰": 100, "仟": 1000}
GROUP_OF = {"万": 10**4, "亿": 10**8}


def _yuan(text: str) -> int:
    """Capitals without 圆, below 万亿 (the amounts a test invoice holds)."""
    total = section = digit = 0
    for char in text:
        if char in DIGIT_OF:
            digit = DIGIT_OF[char]
        elif char in PLACE_OF:
            section += digit * PLACE_OF[char]
            digit = 0
        elif char in GROUP_OF:
            total += (section + digit) * GROUP_OF[char]
            section = digit = 0
        else:
            raise ValueError(f"not a capital: {char!r}")
    return total + section + digit


def read_capitals(text: str) -> int:
    """ "负壹佰壹拾贰圆整" -> -11200. Raises ValueError for text that is not an amount in capitals."""
    sign = -1 if text.startswith("负") else 1
    text = text.removeprefix("负")
    whole, _, cents = text.rpartition("圆") if "圆" in text else ("", "", text)
    fen = _yuan(whole) * 100 if whole else 0
    cents = cents.removesuffix("整").removeprefix("零")
    for unit, value in (("角", 10), ("分", 1)):
        head, found, cents_rest = cents.partition(unit)
        if found:
            fen += DIGIT_OF[head] * value
            cents = cents_rest
    if cents:
        raise ValueError(f"unread capitals: {cents!r}")
    return sign * fen
