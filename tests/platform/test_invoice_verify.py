"""The one invoice verifier (fapiao_runtime.invoice_verify), against a ledger built with real Ed25519
signatures and RFC 6962 proofs: the rules the gateway, reimbursement and `fapiao verify` share."""

from __future__ import annotations

import pytest
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_cli.commands.verify import verify_invoice_receipts
from fapiao_runtime.invoice_verify import (
    ISSUE_NOT_ACCEPTED,
    RECEIPT_FOR_ANOTHER_INVOICE,
    STATE_RECEIPT_FOR_ANOTHER_INVOICE,
    NumberOnly,
    Outcome,
    Verdict,
    decide,
    read_issue,
    verify_invoice,
)
from fapiao_runtime.issuer_keys import IssuerKey
from fapiao_runtime.ledger_client import SigningKey
from fapiao_runtime.ledger_trust import ReceiptInvalid, parse_key_list
from fapiao_runtime.tax_id import uscc_check_char

from tests.gateway.ledger_world import LedgerWorld

pytestmark = pytest.mark.unit


def _uscc(first17: str) -> str:
    return first17 + uscc_check_char(first17)


SELLER = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="Seller Ltd", tax_id=_uscc("91440300MA5F00001"))
BUYER = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="Buyer Co", tax_id=_uscc("91110108MA01ABCD1"))
LINES = [
    invoice_pb2.InvoiceLine(
        name="tea", quantity=2, unit_price_fen=5600, amount_fen=10566, tax_rate_bp=600, tax_fen=634, total_fen=11200
    )
]


class Claim:
    def __init__(self, invoice_number: str, issue_date: str = "20261124", total_fen: int = 11200) -> None:
        self.invoice_number, self.issue_date, self.total_fen = invoice_number, issue_date, total_fen


def _issue(world: LedgerWorld) -> tuple[str, invoice_pb2.Invoice]:
    invoice = world.build_invoice(merchant_id="m1", seller=SELLER, buyer=BUYER, lines=LINES, issue_date="20261124")
    world.issue(invoice)
    return invoice.body.invoice_number, invoice


def _key(signing: SigningKey, **facts: object) -> IssuerKey:
    return IssuerKey(signing.key_id, signing.public_raw, **facts)  # type: ignore[arg-type]


def _answer(world: LedgerWorld, number: str) -> ledger_service_pb2.GetInvoiceStateResponse:
    answer = world.state_response(invoice_number=number)
    assert answer is not None
    return answer


def _verdict(world: LedgerWorld, number: str, key: IssuerKey | None, **claim: object) -> Verdict:
    keys = parse_key_list(world.validator_keys_env())
    return verify_invoice(Claim(number, **claim), _answer(world, number), keys, 3, key)  # type: ignore[arg-type]


def test_a_genuine_invoice_under_a_registered_live_key_of_its_seller() -> None:
    world = LedgerWorld()
    number, _ = _issue(world)
    verdict = _verdict(world, number, _key(world.issuer_for("m1"), seller_tax_id=SELLER.tax_id))
    assert verdict.outcome is Outcome.GENUINE and verdict.verified and not verdict.reason
    assert (verdict.seller_tax_id, verdict.total_fen, verdict.status) == (
        SELLER.tax_id,
        11200,
        ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED,
    )


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        ({"revoked": True}, "ISSUER_KEY_REVOKED"),
        ({"seller_tax_id": BUYER.tax_id}, "ISSUER_KEY_NOT_FOR_SELLER"),
    ],
)
def test_what_the_registry_says_of_the_key_counts(facts: dict[str, object], reason: str) -> None:
    world = LedgerWorld()
    number, _ = _issue(world)
    verdict = _verdict(world, number, _key(world.issuer_for("m1"), **facts))
    # Refused, but what was established is still said (reimbursement reports the status with the problem).
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, reason)
    assert verdict.status == ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED and verdict.seller_tax_id == SELLER.tax_id


def test_a_key_the_ledger_did_not_accept_the_issue_under_is_refused() -> None:
    """Whoever delivers the key (minting's ListIssuerKeys for the gateway), it counts only when the ISSUE
    the validators accepted was signed with it: here the invoice's own signature verifies with the key
    handed out, but the ledger took the ISSUE from another key."""
    world = LedgerWorld()
    invoice = world.build_invoice(merchant_id="m1", seller=SELLER, buyer=BUYER, lines=LINES, issue_date="20261124")
    signer = world.issuer_for("m1")
    world.rotate_issuer("m1")  # the ISSUE transaction is signed by the new key
    world.issue(invoice)
    verdict = _verdict(world, invoice.body.invoice_number, _key(signer))
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, "ISSUER_KEY_NOT_ON_LEDGER")


def test_no_key_and_a_bad_signature_are_refused() -> None:
    world = LedgerWorld()
    number, _ = _issue(world)
    assert _verdict(world, number, None).reason == "UNKNOWN_ISSUER_KEY"
    other = SigningKey.generate(world.issuer_for("m1").key_id)  # same id, other key
    assert _verdict(world, number, _key(other)).reason == "BAD_ISSUER_SIGNATURE"


def test_a_mismatch_reveals_nothing_and_a_receipt_of_another_number_is_forged() -> None:
    world = LedgerWorld()
    number, _ = _issue(world)
    other, _ = _issue(world)
    key = _key(world.issuer_for("m1"))
    assert _verdict(world, number, key, total_fen=11201) == Verdict(Outcome.NO_MATCH)
    keys = parse_key_list(world.validator_keys_env())
    answer = _answer(world, other)
    assert verify_invoice(Claim(number), answer, keys, 3, key).reason == RECEIPT_FOR_ANOTHER_INVOICE


def test_the_status_comes_from_the_latest_accepted_receipt_of_the_same_invoice() -> None:
    world = LedgerWorld()
    number, invoice = _issue(world)
    other, _ = _issue(world)
    key = _key(world.issuer_for("m1"))
    invoice_id = invoice.body.invoice_id
    world.transition(invoice_id, ledger_pb2.TRANSACTION_TYPE_LOCK, ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED, "org")
    assert _verdict(world, number, key).outcome is Outcome.LOCKED
    other_id = _answer(world, other).state.invoice_id
    world.invoices[invoice_id].receipt = world.invoices[other_id].receipt  # a faulty validator's answer
    verdict = _verdict(world, number, key)
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, STATE_RECEIPT_FOR_ANOTHER_INVOICE)
    assert verdict.status == ledger_pb2.INVOICE_LEDGER_STATUS_UNSPECIFIED


def test_an_issue_not_final_is_pending_only_for_who_knows_date_and_total() -> None:
    world = LedgerWorld()
    number, _ = _issue(world)
    answer = _answer(world, number)
    answer.ClearField("issue_receipt")
    keys = parse_key_list(world.validator_keys_env())
    assert read_issue(Claim(number), answer, keys, 3) == Verdict(Outcome.PENDING, invoice_number=number)
    assert read_issue(Claim(number, total_fen=1), answer, keys, 3) == Verdict(Outcome.NO_MATCH)


def test_a_receipt_of_a_rejected_issue_is_forged() -> None:
    world = LedgerWorld()
    number, invoice = _issue(world)
    record = world.invoices[invoice.body.invoice_id]
    result = ledger_pb2.TransactionResult.FromString(record.issue_receipt.result)
    assert result.accepted
    # Re-commit the same ISSUE as rejected: a valid receipt, of a transaction the ledger refused.
    signed_tx = ledger_pb2.SignedTransaction.FromString(record.issue_receipt.transaction)
    result.accepted, result.rejection_reason = False, "ALREADY_ISSUED"
    record.issue_receipt = world.commit(0, signed_tx, result)
    keys = parse_key_list(world.validator_keys_env())
    assert read_issue(Claim(number), _answer(world, number), keys, 3) == Verdict(
        Outcome.FORGED, reason=ISSUE_NOT_ACCEPTED
    )


def test_fapiao_verify_checks_receipts_by_number_alone() -> None:
    """The CLI holds validator keys only: receipts and status are checked, the issuer's signature is not."""
    world = LedgerWorld()
    number, _ = _issue(world)
    keys = parse_key_list(world.validator_keys_env())
    body, verdict = verify_invoice_receipts(_answer(world, number), keys, number)
    assert body.invoice_number == number and verdict.outcome is Outcome.GENUINE
    issued = read_issue(NumberOnly(number), _answer(world, number), keys, None)
    assert not isinstance(issued, Verdict)
    assert decide(issued, keys, None, None).reason == "UNKNOWN_ISSUER_KEY"  # with the issuer check on
    with pytest.raises(ReceiptInvalid) as caught:
        verify_invoice_receipts(_answer(world, number), keys, "26440000000000009999")
    assert caught.value.reason == RECEIPT_FOR_ANOTHER_INVOICE
    answer = _answer(world, number)
    answer.ClearField("issue_receipt")
    with pytest.raises(ReceiptInvalid) as caught:
        verify_invoice_receipts(answer, keys, number)
    assert caught.value.reason == "ISSUE_NOT_FINAL"
