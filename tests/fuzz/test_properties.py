"""Property-based tests (Hypothesis) of the parsers and validators that read outside input.

For every input: the function either returns a value of the promised shape or raises its documented
error (a FapiaoError with a reason, or the ValueError a pure helper documents), nothing else; round
trips hold where a value is written and read back; valid values are accepted.

The "fapiao" settings profile is derandomized with a bounded number of examples, so a run is quick
and the same everywhere; FAPIAO_HYPOTHESIS_PROFILE=thorough explores many more, at random.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import string
import struct
from pathlib import Path
from typing import Any

import pytest
from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.errors import FapiaoError, InvalidArgument
from fapiao_runtime.tax_id import USCC_ALPHABET, is_valid_uscc, uscc_check_char, validate_uscc
from fapiao_runtime.text import bad_character, check_text
from gateway import money, qr_content
from gateway.view_tokens import ViewTokens
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from invoice_minting import invoice_format
from invoice_minting.buyer import check_idempotency_key, normalise_buyer
from invoice_minting.store import after_seq as _after_seq
from invoice_minting.store import page_token as _page_token
from payment_intake import domain
from payment_intake import wechatpay as wx
from payment_intake.webhook import (
    load_json_object,
    notification_from_body,
    payment_from_resource,
    refund_from_resource,
)
from reimbursement.grpc_api import page_token as reimbursement_page_token
from reimbursement.grpc_api import parse_page_token

pytestmark = pytest.mark.unit

# Hypothesis's caches go under build/, with everything else a run writes.
set_hypothesis_home_dir(str(Path(__file__).resolve().parents[2] / "build" / "hypothesis"))
settings.register_profile(
    "fapiao",
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=5000, deadline=None, database=None)
settings.load_profile(os.environ.get("FAPIAO_HYPOTHESIS_PROFILE", "fapiao"))

ASCII_DIGITS = re.compile(r"[0-9]+")
PAYER_KEY = b"k" * 32
# Text as it arrives from outside: any code point, lone surrogates included (JSON "\ud800" escapes,
# Python's surrogateescape), with the characters that broke edges before made likely.
HOSTILE = st.sampled_from(
    ["\x00", "\n", "\r", "\ud800", "\udfff", "\u202e", "\u200b", "\ufeff", "\u0301", "١", "１", "²", " ", "\u3000"]
)
outside_text = st.one_of(
    st.text(st.characters(codec=None), max_size=40),
    st.lists(st.one_of(HOSTILE, st.characters()), max_size=30).map("".join),
)


def _with(base: str) -> st.SearchStrategy[str]:
    """`base` with a hostile character inserted somewhere, or appended."""
    return st.builds(
        lambda pos, char: base[:pos] + char + base[pos:], st.integers(0, len(base)), st.one_of(HOSTILE, st.characters())
    )


def _replaced(base: str) -> st.SearchStrategy[str]:
    """`base` with one character replaced by a hostile one (a digit by a non-ASCII digit, say)."""
    return st.builds(
        lambda pos, char: base[:pos] + char + base[pos + 1 :],
        st.integers(0, max(0, len(base) - 1)),
        st.one_of(HOSTILE, st.characters()),
    )


def _near(base: str) -> st.SearchStrategy[str]:
    return st.one_of(_with(base), _replaced(base))


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- fapiao_runtime.text ----------------------------------------------------------------------


@given(outside_text, st.integers(1, 50), st.booleans())
def test_check_text_returns_clean_bounded_nfc_or_refuses(value: str, max_chars: int, multiline: bool) -> None:
    try:
        checked = check_text(value, "field", max_chars=max_chars, multiline=multiline)
    except InvalidArgument as error:
        assert error.reason in ("INVALID_CHARACTERS", "FIELD_TOO_LONG")
        return
    assert len(checked) <= max_chars
    assert "\x00" not in checked and _encodable(checked)
    assert bad_character(checked, multiline=multiline) is None
    assert check_text(checked, "field", max_chars=max_chars, multiline=multiline) == checked


@given(st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=20))
def test_check_text_accepts_printable_text(value: str) -> None:
    assert check_text(value, "field", max_chars=100) == __import__("unicodedata").normalize("NFC", value)


# --- money ------------------------------------------------------------------------------------


@given(outside_text)
def test_parse_yuan_returns_bounded_fen_or_invalid_amount(text: str) -> None:
    try:
        fen = money.parse_yuan(text)
    except InvalidArgument as error:
        assert error.reason == "INVALID_AMOUNT"
        return
    assert abs(fen) <= money.MAX_ABS_FEN


@given(st.integers(-money.MAX_ABS_FEN, money.MAX_ABS_FEN))
def test_yuan_text_round_trips(fen: int) -> None:
    assert money.parse_yuan(money.yuan_text(fen)) == fen


@given(st.integers(0, money.MAX_ABS_FEN))
def test_yuan_display_round_trips(fen: int) -> None:
    assert money.parse_yuan(money.yuan_display(fen)) == fen


# --- invoice numbers, dates and the verification QR content -----------------------------------

invoice_numbers = st.text(st.sampled_from(string.digits), min_size=20, max_size=20)
issue_dates = st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))


@given(st.one_of(outside_text, invoice_numbers.flatmap(_near)))
@example("0000000000000000000١")
@example("00000000000000000000\n")
def test_parse_invoice_number_returns_twenty_ascii_digits_or_refuses(text: str) -> None:
    try:
        number = qr_content.parse_invoice_number(text)
    except InvalidArgument as error:
        assert error.reason == "INVALID_INVOICE_NUMBER"
        return
    assert len(number) == 20 and ASCII_DIGITS.fullmatch(number), repr(number)


@given(st.one_of(outside_text, issue_dates.flatmap(_near)))
@example("2026021５")
def test_parse_issue_date_returns_an_ascii_calendar_date_or_refuses(text: str) -> None:
    try:
        day = qr_content.parse_issue_date(text)
    except InvalidArgument as error:
        assert error.reason == "INVALID_DATE"
        return
    assert ASCII_DIGITS.fullmatch(day) and len(day) == 8, repr(day)
    dt.datetime.strptime(day, "%Y%m%d")


@given(invoice_numbers, st.integers(0, money.MAX_ABS_FEN), issue_dates)
def test_verification_qr_round_trips(number: str, total_fen: int, day: str) -> None:
    content = invoice_format.verification_qr(number, total_fen, day)
    assert invoice_format.verification_qr_is_consistent(content)
    query = qr_content.parse_qr_content(content)
    assert (query.invoice_number, query.issue_date, query.total_fen) == (number, day, total_fen)


@given(invoice_numbers, st.integers(0, 10**8), issue_dates, st.data())
def test_parse_qr_content_of_any_mutation_returns_or_refuses(number: str, fen: int, day: str, data: Any) -> None:
    content = invoice_format.verification_qr(number, fen, day)
    mutated = data.draw(st.one_of(_near(content), outside_text, st.just(content + "\n"), st.just(content[:-1])))
    try:
        # The verification page checks every field's text (fapiao_runtime.text) before parsing it.
        query = qr_content.parse_qr_content(check_text(mutated, "qr", max_chars=300))
    except InvalidArgument as error:
        assert error.reason in (
            "INVALID_CHARACTERS",
            "FIELD_TOO_LONG",
            "MALFORMED_QR",
            "QR_CHECK_MISMATCH",
            "INVALID_INVOICE_NUMBER",
            "INVALID_AMOUNT",
            "INVALID_DATE",
        )
        return
    assert ASCII_DIGITS.fullmatch(query.invoice_number) and ASCII_DIGITS.fullmatch(query.issue_date)


@given(
    st.integers(0, 99),
    st.one_of(st.sampled_from(["44", "11", "44\n", "٤٤"]), outside_text),
    st.one_of(st.sampled_from(["1", "1\n", "١"]), outside_text),
    st.integers(-1, invoice_format.MAX_SEQUENCE + 1),
)
def test_invoice_number_is_twenty_ascii_digits_or_value_error(year: int, region: str, channel: str, seq: int) -> None:
    try:
        number = invoice_format.invoice_number(2000 + year, region, channel, seq)
    except ValueError:
        return
    assert len(number) == 20 and ASCII_DIGITS.fullmatch(number), repr(number)


# --- tax ids ----------------------------------------------------------------------------------

uscc_bodies = st.builds(
    lambda a, b, region, rest: a + b + region + rest,
    st.sampled_from("123456789ANY"),
    st.sampled_from("123456789"),
    st.text(st.sampled_from(string.digits), min_size=6, max_size=6),
    st.text(st.sampled_from(USCC_ALPHABET), min_size=9, max_size=9),
)


@given(uscc_bodies)
def test_valid_tax_ids_are_accepted(body: str) -> None:
    code = body + uscc_check_char(body)
    assert validate_uscc(code) == code and validate_uscc(f" {code.lower()} ") == code


@given(uscc_bodies, st.integers(0, 17), st.sampled_from(USCC_ALPHABET))
def test_any_single_substitution_is_refused(body: str, position: int, char: str) -> None:
    code = body + uscc_check_char(body)
    assume(code[position] != char)
    assert not is_valid_uscc(code[:position] + char + code[position + 1 :])


@given(st.one_of(outside_text, uscc_bodies.map(lambda b: b + uscc_check_char(b)).flatmap(_near)))
def test_validate_uscc_returns_eighteen_code_characters_or_refuses(text: str) -> None:
    try:
        code = validate_uscc(text)
    except InvalidArgument as error:
        assert error.reason == "INVALID_TAX_ID"
        return
    assert len(code) == 18 and all(c in USCC_ALPHABET for c in code)


# --- the buyer on the claim page --------------------------------------------------------------


@given(
    st.sampled_from([0, 1, 2, 3, -1]),
    outside_text,
    st.one_of(outside_text, uscc_bodies.map(lambda b: b + uscc_check_char(b))),
)
def test_normalise_buyer_returns_clean_party_or_refuses(kind: int, name: str, tax_id: str) -> None:
    try:
        party = normalise_buyer(invoice_pb2.Party(kind=kind, name=name, tax_id=tax_id))
    except ValueError:
        return  # the message API itself refuses text that is not UTF-8 (a lone surrogate)
    except InvalidArgument:
        return
    assert party.name and "\x00" not in party.name and len(party.name) <= 100
    assert not party.tax_id or is_valid_uscc(party.tax_id)


@given(st.one_of(outside_text, st.just("k" * 128 + "\n")))
@example("k" * 128 + "\n")
def test_idempotency_key_is_printable_ascii_or_refused(key: str) -> None:
    try:
        checked = check_idempotency_key(key)
    except InvalidArgument:
        return
    assert 1 <= len(checked) <= 128 and checked.isascii() and checked.isprintable()


# --- payment_intake's commands ----------------------------------------------------------------

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
moments = st.datetimes(dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC))


def _payment(**changes: Any) -> domain.RecordPayment:
    values: dict[str, Any] = {
        "merchant_id": "1900000001",
        "transaction_id": "4200000001",
        "out_trade_no": "order-1",
        "amount_fen": 8800,
        "payer_total_fen": 8800,
        "currency": "CNY",
        "success_time": NOW - dt.timedelta(minutes=1),
        "payer_ref": "ab" * 32,
        "appid": "wxd678efh567hg6787",
        "trade_type": "JSAPI",
    }
    values.update(changes)
    return domain.RecordPayment(**values)


# What reaches payment_intake's commands: a protobuf string (UTF-8 by construction) or a string of a
# notification, whose JSON is refused with any lone surrogate before it is read (load_json_object).
def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


edge_text = outside_text.map(_utf8)


def _storable(value: object) -> bool:
    """What PostgreSQL's text and the fingerprints can hold: UTF-8 without NUL."""
    return not isinstance(value, str) or (_encodable(value) and "\x00" not in value)


@given(
    st.sampled_from(["merchant_id", "transaction_id", "out_trade_no", "currency", "appid", "trade_type"]),
    st.one_of(edge_text, _near("1900000001").map(_utf8), _near("4200000001").map(_utf8)),
)
@example("merchant_id", "1900000001\n")
@example("appid", "wx\x00")
def test_validate_payment_accepts_only_storable_text(field: str, value: str) -> None:
    cmd = _payment(**{field: value})
    try:
        domain.validate_payment(cmd, NOW)
    except InvalidArgument:
        return
    assert all(
        _storable(getattr(cmd, name))
        for name in ("merchant_id", "transaction_id", "out_trade_no", "appid", "trade_type")
    )
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}", cmd.merchant_id), repr(cmd.merchant_id)
    domain.payment_fingerprint(cmd)


@given(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1), moments)
def test_validate_payment_bounds_amounts_and_times(amount: int, payer_total: int, moment: dt.datetime) -> None:
    cmd = _payment(amount_fen=amount, payer_total_fen=payer_total, success_time=moment)
    try:
        domain.validate_payment(cmd, NOW)
    except InvalidArgument as error:
        assert error.reason in ("INVALID_AMOUNT", "INVALID_TIME")
        return
    assert 0 < amount <= domain.MAX_AMOUNT_FEN and 0 <= payer_total <= amount
    assert moment <= NOW + dt.timedelta(days=1)
    domain.payment_fingerprint(cmd)


@given(st.sampled_from(["merchant_id", "transaction_id", "refund_id", "reason"]), edge_text, st.integers(-5, 10**11))
@example("merchant_id", "1900000001\n", 1)
@example("reason", "\x00", 1)
def test_validate_refund_accepts_only_storable_text(field: str, value: str, fen: int) -> None:
    values: dict[str, Any] = {
        "merchant_id": "1900000001",
        "transaction_id": "4200000001",
        "refund_id": "5030000001",
        "refund_fen": fen,
        "refund_time": NOW,
        "reason": "",
        field: value,
    }
    cmd = domain.RecordRefund(**values)
    try:
        domain.validate_refund(cmd, NOW)
    except InvalidArgument:
        return
    assert all(_storable(getattr(cmd, name)) for name in ("merchant_id", "transaction_id", "refund_id", "reason"))
    domain.refund_fingerprint(cmd)


# --- the WeChat Pay notification: bytes, JSON, the decrypted resource --------------------------

SIGNER = wx.PlatformSigner.generate("FUZZSERIAL")
APIV3_KEY = b"0123456789abcdef0123456789abcdef"
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), outside_text),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(outside_text, children, max_size=4)),
    max_leaves=12,
)


def _deep(depth: int) -> bytes:
    return b'{"id":"x","event_type":"TRANSACTION.SUCCESS","resource":' + b"[" * depth + b"]" * depth + b"}"


@given(
    st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([10, 1000, 100_000]).map(_deep),
    )
)
@example(_deep(1000))
def test_notification_body_is_parsed_or_refused(body: bytes) -> None:
    try:
        notification = notification_from_body(body)
    except FapiaoError as error:
        assert error.http_status < 500
        return
    assert isinstance(notification["resource"], dict)


def _resource(**changes: Any) -> dict[str, Any]:
    resource = wx.transaction_resource(
        mchid="1900000001", transaction_id="4200000001", out_trade_no="order-1", total_fen=8800, openid="o123"
    )
    resource.update(changes)
    return resource


@given(
    st.sampled_from(
        [
            "mchid",
            "transaction_id",
            "out_trade_no",
            "success_time",
            "appid",
            "trade_type",
            "trade_state",
            "payer",
            "amount",
        ]
    ),
    json_values,
)
@example("appid", "wx\ud800")
@example("mchid", "1900000001\n")
def test_decrypted_payment_resource_becomes_a_valid_command_or_is_refused(field: str, value: Any) -> None:
    text = json.dumps(_resource(**{field: value}))
    try:
        resource = load_json_object(text.encode(), "MALFORMED_RESOURCE", "resource")
        cmd = domain.validate_payment(payment_from_resource(resource, PAYER_KEY))
    except FapiaoError as error:
        assert error.http_status < 500
        return
    assert all(
        _storable(getattr(cmd, name))
        for name in ("merchant_id", "transaction_id", "out_trade_no", "appid", "trade_type")
    )
    domain.payment_fingerprint(cmd)


@given(outside_text)
@example("\ud800")
def test_payer_openid_of_any_text_is_refused_or_hashed(openid: str) -> None:
    try:
        payment_from_resource(_resource(payer={"openid": openid}), PAYER_KEY)
    except FapiaoError as error:
        assert error.http_status < 500


@given(
    st.sampled_from(["mchid", "transaction_id", "refund_id", "out_refund_no", "refund_status", "amount"]), json_values
)
def test_decrypted_refund_resource_becomes_a_valid_command_or_is_refused(field: str, value: Any) -> None:
    resource = wx.refund_resource(
        mchid="1900000001",
        transaction_id="4200000001",
        out_trade_no="order-1",
        refund_id="5030000001",
        refund_fen=1,
        total_fen=8800,
    )
    resource[field] = value
    try:
        cmd = domain.validate_refund(refund_from_resource(load_json_object(json.dumps(resource).encode(), "X", "x")))
    except FapiaoError as error:
        assert error.http_status < 500
        return
    assert all(_storable(getattr(cmd, name)) for name in ("merchant_id", "transaction_id", "refund_id", "reason"))


@given(st.binary(max_size=300), st.text(string.ascii_letters, max_size=20))
def test_resource_encryption_round_trips(plaintext: bytes, associated: str) -> None:
    resource = wx.encrypt_resource(APIV3_KEY, plaintext, associated)
    assert wx.decrypt_resource(APIV3_KEY, resource) == plaintext


@given(st.dictionaries(st.sampled_from(["ciphertext", "nonce", "associated_data", "algorithm"]), json_values))
def test_decrypt_resource_of_anything_decrypts_or_raises_its_error(resource: dict[str, Any]) -> None:
    try:
        wx.decrypt_resource(APIV3_KEY, resource)
    except wx.ResourceDecryptError:
        pass


@given(outside_text, outside_text, st.binary(max_size=100), outside_text)
def test_verify_signature_of_anything_is_a_boolean(timestamp: str, nonce: str, body: bytes, signature: str) -> None:
    assert wx.verify_signature(SIGNER.private_key.public_key(), timestamp, nonce, body, signature) is False


@given(
    st.text(string.digits, min_size=1, max_size=12),
    st.text(string.ascii_letters, min_size=1, max_size=32),
    st.binary(max_size=200),
)
def test_signature_round_trips(timestamp: str, nonce: str, body: bytes) -> None:
    signature = SIGNER.sign(timestamp, nonce, body)
    assert wx.verify_signature(SIGNER.private_key.public_key(), timestamp, nonce, body, signature)
    assert not wx.verify_signature(SIGNER.private_key.public_key(), timestamp, nonce, body + b" ", signature)


# --- page tokens and view tokens --------------------------------------------------------------

BIGINT = 2**63 - 1


@given(st.integers(0, BIGINT))
def test_minting_page_token_round_trips(seq: int) -> None:
    assert _after_seq(_page_token(seq)) == seq


@given(
    st.one_of(
        outside_text, st.integers(-(2**70), 2**70).map(lambda n: base64.urlsafe_b64encode(f"v1:{n}".encode()).decode())
    )
)
@example(base64.urlsafe_b64encode(b"v1:99999999999999999999").decode())
def test_minting_page_token_is_a_bigint_position_or_refused(token: str) -> None:
    try:
        seq = _after_seq(token)
    except InvalidArgument as error:
        assert error.reason == "INVALID_PAGE_TOKEN"
        return
    assert 0 <= seq <= BIGINT


@given(st.integers(0, BIGINT), st.integers(0, 2**31 - 1))
def test_reimbursement_page_token_round_trips(request_id: int, position: int) -> None:
    assert parse_page_token(reimbursement_page_token(request_id, position)) == (request_id, position)


@given(st.one_of(outside_text, st.binary(max_size=20).map(lambda b: base64.urlsafe_b64encode(b).decode())))
def test_reimbursement_page_token_of_anything_is_a_position_or_refused(token: str) -> None:
    try:
        parsed = parse_page_token(token)
    except InvalidArgument as error:
        assert error.reason == "INVALID_PAGE_TOKEN"
        return
    assert parsed is None or (parsed[0] >= 0 and parsed[1] >= 0 and struct.pack(">qi", *parsed))


VIEW_TOKENS = ViewTokens(b"s" * 32, 3600)


@given(st.text(st.characters(exclude_characters="|", codec="utf-8"), min_size=1, max_size=60))
def test_view_token_round_trips(invoice_id: str) -> None:
    assert VIEW_TOKENS.open(VIEW_TOKENS.issue(invoice_id, now_s=1000), now_s=1000) == invoice_id


@given(st.one_of(outside_text, st.text(string.ascii_letters + string.digits + "-_.=", max_size=120)))
def test_view_token_of_anything_is_refused(token: str) -> None:
    with pytest.raises((InvalidArgument, FapiaoError)):
        VIEW_TOKENS.open(token, now_s=1000)
