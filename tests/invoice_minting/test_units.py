"""Unit tests: tax rounding, number and QR formats, signing, buyer validation, sealing."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import random
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.ledger_client import SigningKey
from invoice_minting.buyer import normalise_buyer
from invoice_minting.invoice_format import (
    beijing_date,
    invoice_number,
    verification_qr,
    verification_qr_is_consistent,
    yuan_text,
)
from invoice_minting.secrets_box import SecretsBox, load_secrets_key, parse_key
from invoice_minting.signing import build_body, sign_invoice, verify_invoice
from invoice_minting.tax import (
    ALLOWED_TAX_RATES_BP,
    check_payment_items,
    lines_for_payment,
    make_line,
    red_letter_lines,
    round_half_away_from_zero,
    tax_of,
    totals_of,
)

from tests.invoice_minting.support import uscc

pytestmark = pytest.mark.unit


def test_rounding_is_half_away_from_zero_and_sign_symmetric() -> None:
    assert [round_half_away_from_zero(n, 2) for n in (5, 3, -5, -3, 4, 1, -1)] == [3, 2, -3, -2, 2, 1, -1]
    assert round_half_away_from_zero(14, 10) == 1 and round_half_away_from_zero(15, 10) == 2
    assert tax_of(3700, 600) == 209  # 209.43
    assert tax_of(10600, 600) == 600  # exact
    assert tax_of(2999, 1300) == 345  # 345.02
    assert tax_of(1, 1300) == 0 and tax_of(9, 1300) == 1  # 0.115 -> 0, 1.035 -> 1
    for total in range(-5000, 5000, 7):
        for rate in ALLOWED_TAX_RATES_BP:
            assert tax_of(-total, rate) == -tax_of(total, rate)


def _items(rng: random.Random) -> list[payments_pb2.PaymentItem]:
    items = []
    for i in range(rng.randint(1, 8)):
        quantity, price = rng.randint(1, 9), rng.randint(1, 99_999)
        items.append(
            payments_pb2.PaymentItem(
                tax_classification_code=str(i),
                name=f"item{i}",
                quantity=quantity,
                unit_price_fen=price,
                amount_fen=quantity * price,
                tax_rate_bp=rng.choice(sorted(ALLOWED_TAX_RATES_BP)),
            )
        )
    return items


def test_lines_add_up_to_totals_exactly_and_red_letters_reverse_exactly() -> None:
    rng = random.Random(7)
    for _ in range(300):
        items = _items(rng)
        amount = sum(i.amount_fen for i in items)
        check_payment_items(amount, items)
        lines = lines_for_payment(amount, items, "x", "x", 600)
        totals = totals_of(lines)
        assert totals.total_fen == amount and totals.amount_fen + totals.tax_fen == amount
        for line in lines:
            assert line.tax_fen == tax_of(line.total_fen, line.tax_rate_bp)
        full = totals_of(red_letter_lines(lines, amount))
        assert (full.total_fen, full.tax_fen, full.amount_fen) == (-amount, -totals.tax_fen, -totals.amount_fen)
        refund = rng.randint(1, amount)
        partial = red_letter_lines(lines, refund)
        assert totals_of(partial).total_fen == -refund
        assert all(line.quantity * line.unit_price_fen == line.total_fen for line in partial)


def test_partial_red_letter_split_is_proportional_by_largest_remainder() -> None:
    lines = lines_for_payment(
        300,
        [
            payments_pb2.PaymentItem(
                tax_classification_code="a", name="a", quantity=1, unit_price_fen=100, amount_fen=100
            ),
            payments_pb2.PaymentItem(
                tax_classification_code="b", name="b", quantity=1, unit_price_fen=200, amount_fen=200
            ),
        ],
        "x",
        "x",
        0,
    )
    # 100 of 300: shares 33.33 and 66.67 -> 33 and 67.
    assert [line.total_fen for line in red_letter_lines(lines, 100)] == [-33, -67]


def test_red_letters_never_reverse_more_of_a_line_than_it_held() -> None:
    """Successive partial red letters split what is left of each line, not the original proportions:
    together they reverse every line (and so every tax rate) exactly, never past zero."""
    rng = random.Random(11)
    for case in range(300):
        items = _items(rng)
        amount = sum(i.amount_fen for i in items)
        lines = lines_for_payment(amount, items, "x", "x", 600)
        earlier: list[list[invoice_pb2.InvoiceLine]] = []
        left = amount
        while left:
            refund = left if rng.random() < 0.3 else rng.randint(1, left)
            red = red_letter_lines(lines, refund, earlier)
            assert totals_of(red).total_fen == -refund
            earlier.append(red)
            left -= refund
        for index, line in enumerate(lines):
            key = (line.tax_classification_code, line.name, line.tax_rate_bp)
            same = [o for o in lines if (o.tax_classification_code, o.name, o.tax_rate_bp) == key]
            reversed_total = sum(
                r.total_fen for red in earlier for r in red if (r.tax_classification_code, r.name, r.tax_rate_bp) == key
            )
            assert reversed_total == -sum(o.total_fen for o in same), (case, index)
    # The reported case: lines of 3 fen at 13 % and 1 fen at 6 %, reversed 2 + 2.
    small = [make_line("A", "a", 1, 3, 3, 1300), make_line("B", "b", 1, 1, 1, 600)]
    first = red_letter_lines(small, 2)
    second = red_letter_lines(small, 2, [first])
    assert [(r.name, r.total_fen) for r in first + second] == [("a", -2), ("a", -1), ("b", -1)]


def test_payment_items_that_do_not_add_up_are_refused() -> None:
    item = payments_pb2.PaymentItem(
        tax_classification_code="a", name="a", quantity=2, unit_price_fen=100, amount_fen=200
    )
    with pytest.raises(InvalidArgument) as info:
        check_payment_items(201, [item])
    assert info.value.reason == "AMOUNT_MISMATCH"
    wrong_product = payments_pb2.PaymentItem(quantity=2, unit_price_fen=100, amount_fen=150)
    with pytest.raises(InvalidArgument) as info:
        check_payment_items(150, [wrong_product])
    assert info.value.reason == "AMOUNT_MISMATCH"
    odd_rate = payments_pb2.PaymentItem(quantity=1, unit_price_fen=100, amount_fen=100, tax_rate_bp=700)
    with pytest.raises(InvalidArgument) as info:
        check_payment_items(100, [odd_rate])
    assert info.value.reason == "INVALID_TAX_RATE"
    with pytest.raises(InvalidArgument) as info:
        check_payment_items(0, [])
    assert info.value.reason == "INVALID_AMOUNT"


def test_invoice_number_format() -> None:
    assert invoice_number(2026, "44", "2", 1) == "26442000000000000001"
    assert invoice_number(2030, "11", "0", 10**15 - 1) == "30110999999999999999"
    for region, channel, sequence in [("4", "2", 1), ("44", "22", 1), ("44", "2", 0), ("44", "2", 10**15)]:
        with pytest.raises(ValueError):
            invoice_number(2026, region, channel, sequence)
    # Year and date are Beijing time: 16:30 UTC on New Year's Eve is already next year in China.
    assert beijing_date(dt.datetime(2026, 12, 31, 16, 30, tzinfo=dt.UTC)) == dt.date(2027, 1, 1)


def test_verification_qr_content() -> None:
    assert [yuan_text(f) for f in (11200, 5, 0, -5, 123456)] == ["112.00", "0.05", "0.00", "-0.05", "1234.56"]
    content = verification_qr("23442000000014209621", 11200, "20230215")
    head = "01,32,,23442000000014209621,112.00,20230215,,"
    assert content == head + hashlib.sha256(head.encode()).hexdigest()[:4].upper()
    assert verification_qr_is_consistent(content)
    assert not verification_qr_is_consistent(content.replace("112.00", "113.00"))


def _body() -> invoice_pb2.InvoiceBody:
    lines = lines_for_payment(1000, [], "3070401000000000000", "餐饮服务", 600)
    return build_body(
        invoice_id=uuid.uuid4(),
        invoice_number="26442000000000000001",
        kind=invoice_pb2.INVOICE_KIND_ORDINARY,
        seller=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="卖方", tax_id=uscc(1)),
        buyer=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三"),
        lines=lines,
        issue_date="20260101",
        merchant_id="m",
        payment_id="p",
        region_code="44",
    )


def test_signature_covers_the_shipped_bytes() -> None:
    key = SigningKey("issuer-1", Ed25519PrivateKey.generate())
    body = _body()
    signed = sign_invoice(body, key)
    assert signed.signature.algorithm == "Ed25519" and signed.signature.key_id == "issuer-1"
    assert signed.body == body.SerializeToString(deterministic=True)
    assert verify_invoice(signed, key.public_raw) == body
    tampered = invoice_pb2.SignedInvoice()
    tampered.CopyFrom(signed)
    tampered.body = signed.body.replace("张三".encode(), "李四".encode())
    with pytest.raises(ValueError):
        verify_invoice(tampered, key.public_raw)
    other = SigningKey("issuer-2", Ed25519PrivateKey.generate())
    with pytest.raises(ValueError):
        verify_invoice(signed, other.public_raw)


def test_buyer_validation() -> None:
    person = invoice_pb2.PARTY_KIND_PERSON
    company = invoice_pb2.PARTY_KIND_COMPANY
    ok = normalise_buyer(invoice_pb2.Party(kind=company, name=" 公司 ", tax_id=uscc(3).lower()))
    assert (ok.name, ok.tax_id) == ("公司", uscc(3))
    assert normalise_buyer(invoice_pb2.Party(kind=person, name="e\u0301")).name == "\u00e9"  # NFC
    cases = [
        (invoice_pb2.Party(kind=person, name="a" * 101), "NAME_TOO_LONG"),
        (invoice_pb2.Party(kind=person, name="a\nb"), "INVALID_CHARACTERS"),
        (invoice_pb2.Party(kind=person, name="a\u200bb"), "INVALID_CHARACTERS"),
        (invoice_pb2.Party(kind=person, name="张三", tax_id="123"), "INVALID_TAX_ID"),
        (invoice_pb2.Party(kind=company, name="公司"), "INVALID_TAX_ID"),
        (invoice_pb2.Party(kind=person, name=""), "NAME_REQUIRED"),
    ]
    for party, reason in cases:
        with pytest.raises(InvalidArgument) as info:
            normalise_buyer(party)
        assert info.value.reason == reason
    assert normalise_buyer(invoice_pb2.Party(kind=person, name="张" * 100)).name == "张" * 100


def test_secrets_box_binds_ciphertext_to_its_row(tmp_path: Path) -> None:
    key = os.urandom(32)
    box = SecretsBox(key)
    sealed = box.seal(b"private", b"key-1")
    assert box.open(sealed, b"key-1") == b"private"
    with pytest.raises(ValueError):
        box.open(sealed, b"key-2")
    with pytest.raises(ValueError):
        SecretsBox(os.urandom(32)).open(sealed, b"key-1")
    assert "redacted" in repr(box) and key.hex() not in repr(box)
    assert parse_key(key.hex()) == key
    assert parse_key(base64.b64encode(key).decode()) == key
    with pytest.raises(RuntimeError):
        load_secrets_key("", dev_mode=False, dev_state_dir=tmp_path)
    dev = load_secrets_key("", dev_mode=True, dev_state_dir=tmp_path)
    assert load_secrets_key("", dev_mode=True, dev_state_dir=tmp_path) == dev
    assert (tmp_path / "invoice_minting.secrets.key").stat().st_mode & 0o077 == 0


def test_secrets_box_opens_under_previous_keys_and_seals_under_the_current_one() -> None:
    from fapiao_runtime.sealing import decode_previous_keys

    old, new = os.urandom(32), os.urandom(32)
    sealed_old = SecretsBox(old).seal(b"private", b"key-1")
    rotating = SecretsBox(new, decode_previous_keys(f" {os.urandom(32).hex()} , {old.hex()} "))
    assert rotating.open(sealed_old, b"key-1") == b"private"
    with pytest.raises(ValueError):
        rotating.open(sealed_old, b"key-2")  # the row binding still holds under an old key
    sealed_new = rotating.seal(b"private", b"key-1")
    assert SecretsBox(new).open(sealed_new, b"key-1") == b"private"
    with pytest.raises(ValueError):
        SecretsBox(old).open(sealed_new, b"key-1")
    assert decode_previous_keys("") == []
    with pytest.raises(ValueError, match="FAPIAO_SECRETS_KEY_PREVIOUS"):
        decode_previous_keys("not-a-key")
