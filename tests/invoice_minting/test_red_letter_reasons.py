"""Unit tests: red-letter reasons travel as the RedLetterReason enum beside their v1 strings."""

from __future__ import annotations

import uuid

import pytest
from fapiao.common.v1 import envelope_pb2
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import unpack
from fapiao_runtime.ledger_client import SigningKey
from invoice_minting.red_letter import RED_LETTER_REASONS
from invoice_minting.signing import build_body, red_letter_reason_code, red_letter_submission, sign_invoice
from invoice_minting.tax import lines_for_payment, red_letter_lines

from tests.invoice_minting.support import uscc

pytestmark = pytest.mark.unit

PREFIX = "RED_LETTER_REASON_"
KEY = SigningKey.generate("issuer-1")


def test_every_accepted_reason_has_its_enum_value_and_every_value_is_accepted() -> None:
    for reason in sorted(RED_LETTER_REASONS):
        code = red_letter_reason_code(reason)
        assert code != invoice_pb2.RED_LETTER_REASON_UNSPECIFIED, f"{reason} has no RedLetterReason value"
        assert invoice_pb2.RedLetterReason.Name(code) == PREFIX + reason
    named = {v.name.removeprefix(PREFIX) for v in invoice_pb2.RedLetterReason.DESCRIPTOR.values if v.number}
    assert named == RED_LETTER_REASONS
    assert red_letter_reason_code("") == invoice_pb2.RED_LETTER_REASON_UNSPECIFIED
    assert red_letter_reason_code("UNSPECIFIED") == invoice_pb2.RED_LETTER_REASON_UNSPECIFIED
    assert red_letter_reason_code("NOT_A_REASON") == invoice_pb2.RED_LETTER_REASON_UNSPECIFIED


def _body(
    kind: int, lines: list[invoice_pb2.InvoiceLine], original: str = "", reason: str = ""
) -> invoice_pb2.InvoiceBody:
    return build_body(
        invoice_id=uuid.uuid4(),
        invoice_number="26442000000000000002" if original else "26442000000000000001",
        kind=kind,
        seller=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="卖方", tax_id=uscc(1)),
        buyer=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="张三"),
        lines=lines,
        issue_date="20260101",
        merchant_id="m",
        payment_id="p",
        region_code="44",
        original_invoice_number=original,
        red_letter_reason=reason,
    )


def _transaction(event_bytes: bytes) -> ledger_pb2.TransactionBody:
    record = unpack(envelope_pb2.EventEnvelope.FromString(event_bytes), ledger_pb2.LedgerRecord)
    return ledger_pb2.TransactionBody.FromString(record.transaction.body)


def test_red_letters_and_their_ledger_transactions_carry_the_reason_twice() -> None:
    lines = lines_for_payment(1000, [], "3070401000000000000", "餐饮服务", 600)
    ordinary = _body(invoice_pb2.INVOICE_KIND_ORDINARY, lines)
    assert (ordinary.red_letter_reason, ordinary.red_letter_reason_code) == (
        "",
        invoice_pb2.RED_LETTER_REASON_UNSPECIFIED,
    )

    red = _body(
        invoice_pb2.INVOICE_KIND_RED_LETTER, red_letter_lines(lines, 400), ordinary.invoice_number, "SALES_DISCOUNT"
    )
    assert red.red_letter_reason == "SALES_DISCOUNT"
    assert red.red_letter_reason_code == invoice_pb2.RED_LETTER_REASON_SALES_DISCOUNT
    signed = sign_invoice(red, KEY)
    # The enum is inside the signed bytes: a verifier reads both from what the issuer signed.
    assert invoice_pb2.InvoiceBody.FromString(signed.body).red_letter_reason_code == red.red_letter_reason_code

    original_id = uuid.UUID(ordinary.invoice_id)
    _, tx_type, event = red_letter_submission(
        original_id, signed, full=False, amount_fen=400, reason="SALES_DISCOUNT", key=KEY, producer="test"
    )
    partial = _transaction(event.envelope_bytes).partial_red_letter
    assert tx_type == ledger_pb2.TRANSACTION_TYPE_PARTIAL_RED_LETTER
    assert (partial.reason, partial.reason_code) == ("SALES_DISCOUNT", invoice_pb2.RED_LETTER_REASON_SALES_DISCOUNT)

    _, tx_type, event = red_letter_submission(
        original_id, signed, full=True, amount_fen=1000, reason="SALES_RETURN", key=KEY, producer="test"
    )
    cancel = _transaction(event.envelope_bytes).cancel
    assert tx_type == ledger_pb2.TRANSACTION_TYPE_CANCEL
    assert (cancel.reason, cancel.reason_code) == ("SALES_RETURN", invoice_pb2.RED_LETTER_REASON_SALES_RETURN)
