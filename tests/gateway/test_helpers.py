"""Unit tests of the gateway's pure helpers: amounts, QR content, view tokens, rate limit, PDF text."""

from __future__ import annotations

import pytest
from fapiao_runtime.errors import FapiaoError, InvalidArgument, PermissionDenied
from gateway.flows import field_for
from gateway.money import parse_yuan, yuan_display, yuan_text
from gateway.pdf import PdfFont, drawable
from gateway.qr_content import parse_qr_content, parse_typed_query, qr_check
from gateway.rate_limit import RateLimiter
from gateway.view_tokens import ViewTokens

pytestmark = pytest.mark.unit

SECRET = b"k" * 32


@pytest.mark.parametrize(
    ("fen", "text", "display"),
    [
        (0, "0.00", "¥0.00"),
        (5, "0.05", "¥0.05"),
        (11200, "112.00", "¥112.00"),
        (123456789, "1234567.89", "¥1,234,567.89"),
        (-5, "-0.05", "-¥0.05"),
        (-11250, "-112.50", "-¥112.50"),
    ],
)
def test_fen_to_yuan_is_exact(fen: int, text: str, display: str) -> None:
    assert yuan_text(fen) == text
    assert yuan_display(fen) == display
    assert parse_yuan(text) == fen


@pytest.mark.parametrize(
    ("text", "fen"),
    [("112", 11200), ("112.5", 11250), (" ¥1,234.05 ", 123405), ("0.01", 1), ("-3", -300), ("￥7.10", 710)],
)
def test_parse_yuan_accepts_what_people_type(text: str, fen: int) -> None:
    assert parse_yuan(text) == fen


@pytest.mark.parametrize("text", ["", "1.234", "1e3", "abc", "1.2.3", "12,34.5x", "100000001", "0x10", "nan", ".5"])
def test_parse_yuan_rejects_everything_else(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_yuan(text)
    assert caught.value.reason == "INVALID_AMOUNT"


def test_every_fen_value_round_trips_through_yuan_text() -> None:
    for fen in [*range(-1000, 1001), 10**10, -(10**10), 99_999_999, 123_456_789]:
        assert parse_yuan(yuan_text(fen)) == fen


def _qr(number: str = "26440000000000000123", amount: str = "112.00", date: str = "20261124") -> str:
    head = f"01,32,,{number},{amount},{date},,"
    return head + qr_check(head)


def test_qr_content_parses_to_the_query() -> None:
    query = parse_qr_content(_qr())
    assert (query.invoice_number, query.issue_date, query.total_fen) == ("26440000000000000123", "20261124", 11200)


def test_qr_check_matches_invoice_minting_format() -> None:
    invoice_format = pytest.importorskip("invoice_minting.invoice_format")
    content = invoice_format.verification_qr("26440000000000000123", 11200, "20261124")
    assert content == _qr()
    parsed = parse_qr_content(content)
    assert parsed.total_fen == 11200 and parsed.fapiao_shaped and parsed.fapiao_check_matches
    # The national example is read too: its check field follows the unpublished national algorithm.
    national = parse_qr_content("01,32,,23442000000014209621,112,20230215,,74AE")
    assert (national.invoice_number, national.amount_fen, national.issue_date) == (
        "23442000000014209621",
        11200,
        "20230215",
    )
    assert national.fapiao_shaped and not national.fapiao_check_matches


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "MALFORMED_QR"),
        ("01,32,,1,2,3", "MALFORMED_QR"),
        ("x1,32,,26440000000000000123,112.00,20261124,,ABCD", "MALFORMED_QR"),
        ("01,9,,26440000000000000123,112.00,20261124,,ABCD", "MALFORMED_QR"),
        ("01,32,,26440000000000000123,112.00,20261124,,AB-D", "MALFORMED_QR"),
        (_qr(number="2644000000000000012"), "INVALID_INVOICE_NUMBER"),
        (_qr(amount="11.2.0"), "INVALID_AMOUNT"),
        (_qr(date="20261332"), "INVALID_DATE"),
        ("01," * 100, "MALFORMED_QR"),
    ],
)
def test_bad_qr_content_is_refused_with_a_reason(content: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_qr_content(content)
    assert caught.value.reason == reason


@pytest.mark.parametrize("content", [_qr().replace("112.00", "113.00"), _qr()[:-4] + "zzzz", _qr()[:-4] + "ABCD"])
def test_an_altered_fapiao_qr_is_read_but_its_check_does_not_match(content: str) -> None:
    parsed = parse_qr_content(content)
    assert parsed.fapiao_shaped and not parsed.fapiao_check_matches


def test_typed_query_normalises_and_validates() -> None:
    query = parse_typed_query(" 2644 0000 0000 0000 0123 ", "2026-11-24", "112")
    assert (query.invoice_number, query.issue_date, query.total_fen) == ("26440000000000000123", "20261124", 11200)
    with pytest.raises(InvalidArgument, match="INVALID_DATE"):
        parse_typed_query("26440000000000000123", "20260230", "1")
    with pytest.raises(InvalidArgument, match="INVALID_INVOICE_NUMBER"):
        parse_typed_query("2644000000000000012x", "20261124", "1")


def test_view_token_round_trip_and_expiry() -> None:
    tokens = ViewTokens(SECRET, ttl_s=60)
    token = tokens.issue("inv-1", now_s=1000)
    assert "inv-1" not in token.split(".")[1]
    assert tokens.open(token, now_s=1059) == "inv-1"
    with pytest.raises(PermissionDenied) as caught:
        tokens.open(token, now_s=1061)
    assert caught.value.reason == "VIEW_TOKEN_EXPIRED"


def test_view_token_cannot_be_forged_or_moved_to_another_invoice() -> None:
    tokens = ViewTokens(SECRET, ttl_s=60)
    token = tokens.issue("inv-1", now_s=1000)
    other = tokens.issue("inv-2", now_s=1000)
    payload, mac = token.split(".")
    swapped = f"{other.split('.')[0]}.{mac}"
    for bad in (swapped, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), ViewTokens(b"x" * 32, 60).issue("inv-1")):
        with pytest.raises(PermissionDenied) as caught:
            tokens.open(bad, now_s=1000)
        assert caught.value.reason == "BAD_VIEW_TOKEN"
    for garbage in ("", "abc", "a.b.c", "!!!.???", "x" * 400, "inv-1"):
        with pytest.raises(FapiaoError):
            tokens.open(garbage, now_s=1000)
    # Extending the expiry inside the payload breaks the MAC.
    import base64

    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).replace(b"|1060", b"|9999")
    extended = base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac
    with pytest.raises(PermissionDenied):
        tokens.open(extended, now_s=1000)


def test_view_tokens_need_a_real_secret() -> None:
    with pytest.raises(ValueError):
        ViewTokens(b"short", 60)
    assert "k" not in repr(ViewTokens(SECRET, 60)).replace("ViewTokens", "")


def test_rate_limiter_burst_then_refill() -> None:
    limiter = RateLimiter(burst=3, per_minute=60)
    assert [limiter.allow("1.2.3.4", now=0)[0] for _ in range(4)] == [True, True, True, False]
    allowed, retry_after = limiter.allow("1.2.3.4", now=0)
    assert not allowed and 0 < retry_after <= 1.0
    assert limiter.allow("5.6.7.8", now=0)[0], "another client has its own bucket"
    assert limiter.allow("1.2.3.4", now=1.01)[0], "one token per second comes back"
    assert not limiter.allow("1.2.3.4", now=1.02)[0]


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(burst=1, per_minute=1, max_clients=100)
    for i in range(10_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}", now=0)
    assert len(limiter) == 100
    # The most recent clients are still limited; the evicted oldest start afresh.
    assert not limiter.allow("10.0.39.15", now=0)[0]
    assert limiter.allow("10.0.0.0", now=0)[0]


def test_a_guarded_limiter_cannot_be_reset_by_flooding_it_with_new_clients() -> None:
    """keep_spent (the per-invoice failure budget): a spent bucket is never evicted to make room, so
    10,000 new numbers cannot give a guessed number a fresh budget; new numbers wait for room instead."""
    limiter = RateLimiter(burst=1, per_minute=1, max_clients=100, keep_spent=True)
    assert limiter.allow("target", now=0)[0]
    flood = [limiter.allow(f"n{i}", now=0)[0] for i in range(10_000)]
    assert sum(flood) == 99 and len(limiter) == 100
    assert not limiter.allow("target", now=0)[0], "the target's spent budget was kept"
    # Refilled buckets make room again (forgetting a full bucket loses nothing).
    assert limiter.allow("late", now=120)[0]
    limiter.give_back("late")
    assert limiter.allow("late", now=120)[0], "a token given back can be taken again"


def test_pdf_text_replaces_undrawable_characters_losslessly() -> None:
    latin = PdfFont(None, frozenset(range(0x20, 0x7F)))
    text, replaced = drawable("Buyer 张三 Ltd", latin)
    assert text == "Buyer [U+5F20][U+4E09] Ltd" and replaced
    assert drawable("plain", latin) == ("plain", False)


@pytest.mark.parametrize(
    ("reason", "message", "field"),
    [
        ("INVALID_TAX_ID", "x", "tax_id"),
        ("NAME_TOO_LONG", "x", "name"),
        ("NAME_REQUIRED", "x", "name"),
        ("INVALID_CHARACTERS", "buyer tax id contains a control character", "tax_id"),
        ("INVALID_CHARACTERS", "buyer name contains a control character", "name"),
        ("ALREADY_CLAIMED", "x", None),
    ],
)
def test_minting_reasons_land_next_to_their_field(reason: str, message: str, field: str | None) -> None:
    assert field_for(InvalidArgument(reason, message)) == field


def test_pdf_renders_chinese_names_with_or_without_a_cjk_font(monkeypatch: pytest.MonkeyPatch) -> None:
    from fapiao.invoicing.v1 import invoice_pb2
    from gateway import pdf as pdf_module

    from tests.gateway.fake_backends import SELLER
    from tests.gateway.ledger_world import LedgerWorld

    line = invoice_pb2.InvoiceLine(
        name="餐饮服务 and a very long item name that cannot fit its column",
        quantity=1,
        unit_price_fen=11200,
        amount_fen=10566,
        tax_rate_bp=600,
        tax_fen=634,
        total_fen=11200,
    )
    invoice = LedgerWorld().build_invoice(
        merchant_id="m1", seller=SELLER, buyer=invoice_pb2.Party(name="张三"), lines=[line], issue_date="20261124"
    )
    invoice.status = invoice_pb2.INVOICE_STATUS_ISSUED
    rendered = pdf_module.render_invoice_pdf(invoice)
    assert rendered.startswith(b"%PDF-") and b"/Subtype /Image" in rendered
    # No font files at all: the core font and code points, never an exception.
    monkeypatch.setattr(pdf_module, "CJK_FONT_CANDIDATES", ())
    monkeypatch.setattr(pdf_module, "LATIN_FONT_CANDIDATES", ())
    pdf_module.choose_font.cache_clear()
    try:
        assert pdf_module.choose_font().path is None
        assert pdf_module.render_invoice_pdf(invoice).startswith(b"%PDF-")
    finally:
        pdf_module.choose_font.cache_clear()


def test_rate_limiter_available_does_not_consume() -> None:
    limiter = RateLimiter(burst=1, per_minute=1)
    assert limiter.available("n", now=0) and limiter.available("n", now=0)
    assert limiter.allow("n", now=0)[0]
    assert not limiter.available("n", now=1)
    assert limiter.available("n", now=61)
