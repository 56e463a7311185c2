"""Money as the national invoice writes it: yuan in figures ("112.00") and in capitals (壹佰壹拾贰圆整).

Integer fen in, text out: no floats anywhere. The capitals follow the People's Bank of China rules for
writing amounts (支付结算办法, 正确填写票据和结算凭证的基本规定) as the 数电票 prints 价税合计（大写）:

- digits 零壹贰叁肆伍陆柒捌玖, places 拾佰仟 inside each group of four digits, groups 万, 亿, 万亿
  (bigger amounts raise ValueError), then 圆, 角, 分; a leading ten is 壹拾 (10 -> 壹拾圆整);
- one 零 stands for any run of zeros between non-zero digits, inside a group or across groups
  (100500 -> 壹拾万零伍佰圆整, 100000005 -> 壹亿零伍圆整); zeros at the end of the yuan are not
  written (1680.32 -> 壹仟陆佰捌拾圆叁角贰分);
- an amount that stops at 圆 or at 角 ends in 整 (112 -> 壹佰壹拾贰圆整, 0.50 -> 伍角整); one with 分
  does not (105.66 -> 壹佰零伍圆陆角陆分); a zero 角 before a non-zero 分 is written 零 (3.04 ->
  叁圆零肆分); an amount under one yuan has no 圆 (0.05 -> 伍分); zero is 零圆整;
- a negative amount (a red-letter invoice) is written with 负 first (-112 -> 负壹佰壹拾贰圆整).
"""

from __future__ import annotations

DIGITS = "零壹贰叁肆伍陆柒捌玖"
PLACES = ("", "拾", "佰", "仟")
GROUPS = ("", "万", "亿", "万亿")
# 万亿 (10^12) is the largest group written: an amount of 10^16 yuan or more has no capitals.
MAX_CAPITALS_FEN = 10 ** (4 * len(GROUPS)) * 100 - 1


def yuan_text(fen: int) -> str:
    """Amount in yuan with exactly two decimals, sign first: 11200 -> "112.00", -5 -> "-0.05"."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def _group_capitals(group: int) -> str:
    """0 < group < 10000 in capitals, zeros inside collapsed to one 零, trailing zeros dropped."""
    assert 0 < group < 10_000
    text = ""
    pending_zero = False
    for place in range(3, -1, -1):
        digit = group // 10**place % 10
        if digit == 0:
            pending_zero = bool(text)
            continue
        if pending_zero:
            text += DIGITS[0]
            pending_zero = False
        text += DIGITS[digit] + PLACES[place]
    return text


def _yuan_capitals(yuan: int) -> str:
    """yuan > 0 in capitals, without 圆."""
    groups = []
    rest = yuan
    while rest:
        rest, group = divmod(rest, 10_000)
        groups.append(group)
    text = ""
    zero_before = False  # a zero digit lies between what is written and what comes next
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            zero_before = bool(text)
            continue
        if text and (zero_before or group < 1000):
            text += DIGITS[0]
        text += _group_capitals(group) + GROUPS[index]
        zero_before = group % 10 == 0
    return text


def yuan_capitals(fen: int) -> str:
    """The amount `fen` in capitals as 价税合计（大写） prints it (rules in the module docstring).

    Raises ValueError for an amount of 10^16 yuan or more (no capitals exist past 万亿 groups).
    """
    if abs(fen) > MAX_CAPITALS_FEN:
        raise ValueError("amount too large to write in capitals")
    sign = "负" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    jiao, fen_digit = divmod(cents, 10)
    text = _yuan_capitals(yuan) + "圆" if yuan else ""
    if jiao:
        text += DIGITS[jiao] + "角"
    elif fen_digit and yuan:
        text += DIGITS[0]
    if fen_digit:
        text += DIGITS[fen_digit] + "分"
    else:
        text = (text or DIGITS[0] + "圆") + "整"
    return sign + text
