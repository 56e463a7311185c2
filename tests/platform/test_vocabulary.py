"""The invoice vocabulary: one rule each for the number, the QR check field and the claim-token hash,
and the services that write a value agree with the ones that check it."""

from __future__ import annotations

import hashlib

import pytest
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.vocabulary import (
    claim_token_hash,
    is_invoice_number,
    qr_check,
    qr_check_matches,
    require_invoice_number,
    with_qr_check,
)
from gateway.qr_content import parse_qr_content
from invoice_minting.invoice_format import verification_qr, verification_qr_is_consistent

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text",
    ["", "1" * 19, "1" * 21, "2644000000000000001\n", " 26440000000000000001", "٢" * 20, "+6440000000000000001"],
)
def test_only_twenty_ascii_digits_are_an_invoice_number(text: str) -> None:
    assert not is_invoice_number(text)
    with pytest.raises(InvalidArgument) as caught:
        require_invoice_number(text)
    assert caught.value.reason == "INVALID_INVOICE_NUMBER"


def test_an_invoice_number_passes_unchanged() -> None:
    assert require_invoice_number("26440000000000000001") == "26440000000000000001"


def test_qr_check_is_two_bytes_of_sha256_over_the_head() -> None:
    head = "01,32,,26440000000000000123,112.00,20261124,,"
    assert qr_check(head) == hashlib.sha256(head.encode()).hexdigest()[:4].upper()
    assert with_qr_check(head) == head + qr_check(head)


def test_qr_check_detects_alteration_and_ignores_hex_case() -> None:
    content = with_qr_check("01,32,,26440000000000000123,112.00,20261124,,")
    assert qr_check_matches(content)
    assert qr_check_matches(content[:-4] + content[-4:].lower())
    assert not qr_check_matches(content.replace("112.00", "113.00"))
    assert not qr_check_matches(content[:-4] + "ZZZZ")
    assert not qr_check_matches(content.replace(",", ";"))


def test_minting_writes_what_the_verification_page_reads() -> None:
    content = verification_qr("26440000000000000123", 11_200, "20261124")
    assert verification_qr_is_consistent(content) and qr_check_matches(content)
    query = parse_qr_content(content)
    assert (query.invoice_number, query.total_fen, query.issue_date) == ("26440000000000000123", 11_200, "20261124")


def test_claim_token_hash_is_stable_and_distinct() -> None:
    assert claim_token_hash("abc") == hashlib.sha256(b"abc").digest()
    assert claim_token_hash("abc") != claim_token_hash("abd")
