"""Money in figures and in capitals as the national invoice prints 价税合计 (fapiao_runtime.money_text)."""

from __future__ import annotations

import pytest
from fapiao_runtime.money_text import MAX_CAPITALS_FEN, yuan_capitals, yuan_text
from hypothesis import given
from hypothesis import strategies as st

from tests.support.capitals import read_capitals

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("fen", "capitals"),
    [
        (0, "零圆整"),
        (1, "壹分"),
        (5, "伍分"),
        (50, "伍角整"),
        (55, "伍角伍分"),
        (100, "壹圆整"),
        (304, "叁圆零肆分"),
        (1000, "壹拾圆整"),
        (1001, "壹拾圆零壹分"),
        (1050, "壹拾圆伍角整"),
        (11200, "壹佰壹拾贰圆整"),
        (10566, "壹佰零伍圆陆角陆分"),
        (101000, "壹仟零壹拾圆整"),
        (168032, "壹仟陆佰捌拾圆叁角贰分"),
        (1640902, "壹万陆仟肆佰零玖圆零贰分"),
        (1001000, "壹万零壹拾圆整"),
        (10050000, "壹拾万零伍佰圆整"),
        (10750053, "壹拾万零柒仟伍佰圆伍角叁分"),
        (100000000, "壹佰万圆整"),
        (10000000000, "壹亿圆整"),
        (10000000500, "壹亿零伍圆整"),
        (10001000000, "壹亿零壹万圆整"),
        (12345678900, "壹亿贰仟叁佰肆拾伍万陆仟柒佰捌拾玖圆整"),
        (100000000000000, "壹万亿圆整"),
        (MAX_CAPITALS_FEN, "玖仟玖佰玖拾玖万亿玖仟玖佰玖拾玖亿玖仟玖佰玖拾玖万玖仟玖佰玖拾玖圆玖角玖分"),
        (-11200, "负壹佰壹拾贰圆整"),
        (-5, "负伍分"),
    ],
)
def test_capitals_follow_the_national_rules(fen: int, capitals: str) -> None:
    assert yuan_capitals(fen) == capitals


def test_amounts_past_the_largest_group_have_no_capitals() -> None:
    with pytest.raises(ValueError, match="too large"):
        yuan_capitals(MAX_CAPITALS_FEN + 1)
    with pytest.raises(ValueError, match="too large"):
        yuan_capitals(-MAX_CAPITALS_FEN - 1)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_capitals_spell_the_amount(fen: int) -> None:
    capitals = yuan_capitals(fen)
    assert read_capitals(capitals) == fen
    assert "零零" not in capitals and not capitals.removesuffix("整").endswith("零")
    assert capitals.endswith("分") != capitals.endswith("整"), "整 exactly when there is no 分"


@pytest.mark.parametrize(
    ("fen", "text"), [(11200, "112.00"), (5, "0.05"), (0, "0.00"), (-5, "-0.05"), (-123456, "-1234.56")]
)
def test_figures_have_two_decimals_and_the_sign_first(fen: int, text: str) -> None:
    assert yuan_text(fen) == text
