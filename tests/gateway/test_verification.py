"""Unit tests of gateway.verification against a ledger built with real signatures and Merkle proofs."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime.ledger_trust import parse_key_list
from gateway.qr_content import VerificationQuery
from gateway.verification import Outcome, freshest, signed_invoice_of, verify_invoice

from tests.gateway.fake_backends import SELLER, uscc
from tests.gateway.ledger_world import LedgerWorld

pytestmark = pytest.mark.unit

BUYER = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="Buyer Co", tax_id=uscc("91110108MA01ABCD1"))
LINES = [
    invoice_pb2.InvoiceLine(
        name="tea", quantity=2, unit_price_fen=5600, amount_fen=10566, tax_rate_bp=600, tax_fen=634, total_fen=11200
    )
]


def _issued(world: LedgerWorld, **issue: int) -> tuple[invoice_pb2.Invoice, VerificationQuery]:
    invoice = world.build_invoice(merchant_id="m1", seller=SELLER, buyer=BUYER, lines=LINES, issue_date="20261124")
    world.issue(invoice, **issue)
    return invoice, VerificationQuery(invoice.body.invoice_number, "20261124", 11200)


def _lookup(world: LedgerWorld):  # type: ignore[no-untyped-def]
    async def issuer_key(merchant_id: str, key_id: str) -> Ed25519PublicKey | None:
        for key in world.issuer_keys.get(merchant_id, []):
            if key.key_id == key_id:
                return key.public_key
        return None

    return issuer_key


async def _verdict(world: LedgerWorld, query: VerificationQuery, answer: ledger_service_pb2.GetInvoiceStateResponse):  # type: ignore[no-untyped-def]
    keys = parse_key_list(world.validator_keys_env())
    return await verify_invoice(query, answer, keys, 3, _lookup(world))


async def test_genuine_invoice_shows_seller_never_buyer() -> None:
    world = LedgerWorld()
    invoice, query = _issued(world)
    verdict = await _verdict(world, query, world.state_response(invoice_number=query.invoice_number))
    assert verdict.outcome is Outcome.GENUINE
    assert (verdict.seller_name, verdict.seller_tax_id, verdict.total_fen) == (SELLER.name, SELLER.tax_id, 11200)
    assert BUYER.name not in repr(verdict) and BUYER.tax_id not in repr(verdict)
    assert signed_invoice_of(world.invoices[invoice.body.invoice_id].issue_receipt).body == invoice.signed.body


@pytest.mark.parametrize(("date", "total"), [("20261123", 11200), ("20261124", 11201), ("20261124", 1120000)])
async def test_wrong_date_or_total_looks_like_an_unknown_invoice(date: str, total: int) -> None:
    world = LedgerWorld()
    _, query = _issued(world)
    answer = world.state_response(invoice_number=query.invoice_number)
    verdict = await _verdict(world, VerificationQuery(query.invoice_number, date, total), answer)
    assert verdict.outcome is Outcome.NO_MATCH
    assert verdict.seller_name == "" and verdict.total_fen == 0


@pytest.mark.parametrize(
    ("status", "tx_type", "outcome"),
    [
        (ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED, ledger_pb2.TRANSACTION_TYPE_LOCK, Outcome.LOCKED),
        (ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED, ledger_pb2.TRANSACTION_TYPE_CLOSE, Outcome.REIMBURSED),
        (ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED, ledger_pb2.TRANSACTION_TYPE_CANCEL, Outcome.CANCELLED),
    ],
)
async def test_status_comes_from_the_latest_verified_receipt(status: int, tx_type: int, outcome: Outcome) -> None:
    world = LedgerWorld()
    invoice, query = _issued(world)
    world.transition(invoice.body.invoice_id, tx_type, status, uscc("91110108MA01ABCD1"))
    verdict = await _verdict(world, query, world.state_response(invoice_number=query.invoice_number))
    assert verdict.outcome is outcome


async def test_unsigned_state_claims_are_ignored() -> None:
    """A validator that reports CLOSED in the (unsigned) state field without a receipt is not believed."""
    world = LedgerWorld()
    _, query = _issued(world)
    answer = world.state_response(invoice_number=query.invoice_number)
    answer.state.status = ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED
    assert (await _verdict(world, query, answer)).outcome is Outcome.GENUINE


async def test_tampered_invoice_bytes_are_forged() -> None:
    world = LedgerWorld()
    _, query = _issued(world)
    answer = world.state_response(invoice_number=query.invoice_number)
    signed_tx = ledger_pb2.SignedTransaction.FromString(answer.issue_receipt.transaction)
    body = ledger_pb2.TransactionBody.FromString(signed_tx.body)
    body.issue.invoice.signature.signature = bytes(64)
    signed_tx.body = body.SerializeToString()
    answer.issue_receipt.transaction = signed_tx.SerializeToString()
    verdict = await _verdict(world, query, answer)
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, "RECEIPT_BAD_TRANSACTION_PROOF")


async def test_issuer_signature_is_checked_with_the_issuer_key() -> None:
    world = LedgerWorld()
    _, query = _issued(world)
    answer = world.state_response(invoice_number=query.invoice_number)
    world.issuer_keys["m1"] = [world.rotate_issuer("m2")]  # the merchant's published key is not the signer
    world.issuer_keys["m1"][0].key_id = "issuer-m1-1"
    verdict = await _verdict(world, query, answer)
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, "BAD_ISSUER_SIGNATURE")
    world.issuer_keys["m1"] = []
    verdict = await _verdict(world, query, answer)
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, "UNKNOWN_ISSUER_KEY")


async def test_old_invoices_verify_after_key_rotation() -> None:
    world = LedgerWorld()
    _, query = _issued(world)
    world.rotate_issuer("m1")
    verdict = await _verdict(world, query, world.state_response(invoice_number=query.invoice_number))
    assert verdict.outcome is Outcome.GENUINE


async def test_two_validator_signatures_are_not_a_quorum() -> None:
    world = LedgerWorld()
    _, query = _issued(world, signers=2)
    verdict = await _verdict(world, query, world.state_response(invoice_number=query.invoice_number))
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, "RECEIPT_NO_QUORUM")


async def test_receipt_of_another_invoice_is_forged() -> None:
    world = LedgerWorld()
    _, query = _issued(world)
    other, _ = _issued(world)
    answer = world.state_response(invoice_number=query.invoice_number)
    answer.issue_receipt.CopyFrom(world.invoices[other.body.invoice_id].issue_receipt)
    verdict = await _verdict(world, query, answer)
    assert (verdict.outcome, verdict.reason) == (Outcome.FORGED, "RECEIPT_FOR_ANOTHER_INVOICE")


async def test_not_yet_final_is_pending_only_for_matching_details() -> None:
    world = LedgerWorld()
    _, query = _issued(world)
    answer = world.state_response(invoice_number=query.invoice_number)
    answer.ClearField("issue_receipt")
    answer.ClearField("receipt")
    assert (await _verdict(world, query, answer)).outcome is Outcome.PENDING
    wrong = VerificationQuery(query.invoice_number, query.issue_date, query.total_fen + 1)
    assert (await _verdict(world, wrong, answer)).outcome is Outcome.NO_MATCH


async def test_the_freshest_verified_status_of_several_validators_is_shown() -> None:
    """A validator behind (or a faulty one answering an older valid receipt) cannot show an outdated
    status, and a faulty one's bad receipt cannot make a genuine invoice look forged."""
    world = LedgerWorld()
    invoice, query = _issued(world)
    world.transition(
        invoice.body.invoice_id,
        ledger_pb2.TRANSACTION_TYPE_CLOSE,
        ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED,
        uscc("91110108MA01ABCD1"),
    )
    current = world.state_response(invoice_number=query.invoice_number)
    behind = ledger_service_pb2.GetInvoiceStateResponse()
    behind.CopyFrom(current)
    behind.ClearField("receipt")  # only the issue receipt: ISSUED as far as it knows
    broken = ledger_service_pb2.GetInvoiceStateResponse()
    broken.CopyFrom(current)
    broken.issue_receipt.header = b"tampered"
    verdicts = [await _verdict(world, query, answer) for answer in (behind, current, broken)]
    assert [v.outcome for v in verdicts] == [Outcome.GENUINE, Outcome.REIMBURSED, Outcome.FORGED]
    for order in (verdicts, verdicts[::-1], [verdicts[2], verdicts[0]]):
        expected = Outcome.REIMBURSED if verdicts[1] in order else Outcome.GENUINE
        assert freshest(list(order)).outcome is expected
