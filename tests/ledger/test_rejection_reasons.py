"""Unit tests: every rejection reason the state machine can produce travels as a RejectionReason too.

The reasons are enumerated from the state machine's source (every `_reject(...)` call), so a new reason
without its enum value fails here, not in a client.
"""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.invoice_ids import invoice_id_for_number
from fapiao_runtime.ledger_client import SigningKey, sign_transaction
from ledger import state_machine
from ledger.state_machine import REJECTION_CODES, SubmitterKey, execute, parse_transaction

pytestmark = pytest.mark.unit

PREFIX = "REJECTION_REASON_"
SELLER = "91440300MA5FXXXX1A"
ISSUER = SigningKey.generate("issuer-1")
REIMBURSER = SigningKey.generate("reimburser-1")


def _module_tree() -> ast.Module:
    return ast.parse(Path(state_machine.__file__).read_text(encoding="utf-8"))


def _produced_reasons() -> set[str]:
    """The reason of every `_reject(base, REASON, ...)` call in the state machine, resolved to its string."""
    reasons = set()
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_reject":
            argument = node.args[1]
            if isinstance(argument, ast.Constant):
                reasons.add(argument.value)
            else:
                assert isinstance(argument, ast.Name), ast.dump(argument)
                reasons.add(getattr(state_machine, argument.id))
    return reasons


def test_every_reason_the_state_machine_produces_has_its_enum_value() -> None:
    produced = _produced_reasons()
    assert {"MALFORMED", "ALREADY_LOCKED", "AMOUNT_EXCEEDED", "WRONG_CHAIN"} <= produced
    for reason in sorted(produced):
        code = REJECTION_CODES.get(reason, ledger_pb2.REJECTION_REASON_UNSPECIFIED)
        assert code != ledger_pb2.REJECTION_REASON_UNSPECIFIED, f"{reason} has no RejectionReason value"
        assert ledger_pb2.RejectionReason.Name(code) == PREFIX + reason
    # No enum value (nor mapping) for a reason the ledger never gives.
    assert set(REJECTION_CODES) == produced
    named = {v.number for v in ledger_pb2.RejectionReason.DESCRIPTOR.values} - {0}
    assert set(REJECTION_CODES.values()) == named


def test_only_reject_writes_a_rejection_reason() -> None:
    """Every rejection goes through `_reject`, which sets the string and the enum together."""
    writers = []
    for function in ast.walk(_module_tree()):
        if not isinstance(function, ast.FunctionDef):
            continue
        for node in ast.walk(function):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Attribute) and t.attr.startswith("rejection_reason") for t in targets):
                writers.append(function.name)
    assert writers and set(writers) == {"_reject"}


class View:
    """The chain as of the previous transaction, in dicts: registered keys, invoice states, ids seen."""

    def __init__(self, *keys: tuple[SigningKey, int, str]) -> None:
        self.keys = {
            k.key_id: SubmitterKey(k.key_id, k.public_raw, k.public_key, role, subject, False, str(uuid.uuid4()))
            for k, role, subject in keys
        }
        self.states: dict[str, ledger_pb2.InvoiceState] = {}
        self.ids: set[str] = set()

    def key(self, key_id: str) -> SubmitterKey | None:
        return self.keys.get(key_id)

    def invoice(self, invoice_id: str) -> ledger_pb2.InvoiceState | None:
        return self.states.get(invoice_id)

    def seen(self, transaction_id: str) -> bool:
        return transaction_id in self.ids

    def run(self, signed: ledger_pb2.SignedTransaction, key: str) -> ledger_pb2.TransactionResult:
        outcome = execute(parse_transaction(signed), key, self, chain_id=0, chains=1, height=1, index=0, offset=0)
        if outcome.transaction_id and not outcome.duplicate:
            self.ids.add(outcome.transaction_id)
        if outcome.new_state is not None:
            self.states[outcome.invoice_id] = outcome.new_state
        return outcome.result


def _signed(key: SigningKey, invoice_id: str, **fields: object) -> ledger_pb2.SignedTransaction:
    body = ledger_pb2.TransactionBody(transaction_id=str(uuid.uuid4()), invoice_id=invoice_id, **fields)  # type: ignore[arg-type]
    return sign_transaction(body, key)


def _issue(invoice_id: str, number: str) -> ledger_pb2.SignedTransaction:
    invoice = invoice_pb2.InvoiceBody(
        invoice_id=invoice_id,
        invoice_number=number,
        kind=invoice_pb2.INVOICE_KIND_ORDINARY,
        seller=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="Seller", tax_id=SELLER),
        total_fen=10_000,
    ).SerializeToString(deterministic=True)
    signed_invoice = invoice_pb2.SignedInvoice(body=invoice, signature=ISSUER.sign(invoice))
    return _signed(
        ISSUER, invoice_id, type=ledger_pb2.TRANSACTION_TYPE_ISSUE, issue=ledger_pb2.IssueAction(invoice=signed_invoice)
    )


def _lock(invoice_id: str, organisation: str, key: SigningKey = REIMBURSER) -> ledger_pb2.SignedTransaction:
    lock = ledger_pb2.LockAction(organisation_tax_id=organisation)
    return _signed(key, invoice_id, type=ledger_pb2.TRANSACTION_TYPE_LOCK, lock=lock)


def _unlock(invoice_id: str, organisation: str) -> ledger_pb2.SignedTransaction:
    unlock = ledger_pb2.UnlockAction(organisation_tax_id=organisation)
    return _signed(REIMBURSER, invoice_id, type=ledger_pb2.TRANSACTION_TYPE_UNLOCK, unlock=unlock)


def _partial(invoice_id: str, amount_fen: int) -> ledger_pb2.SignedTransaction:
    partial = ledger_pb2.PartialRedLetterAction(amount_fen=amount_fen, reason="SALES_DISCOUNT")
    return _signed(ISSUER, invoice_id, type=ledger_pb2.TRANSACTION_TYPE_PARTIAL_RED_LETTER, partial_red_letter=partial)


def test_executed_rejections_carry_the_enum_beside_the_string() -> None:
    view = View(
        (ISSUER, ledger_pb2.SUBMITTER_ROLE_ISSUER, SELLER), (REIMBURSER, ledger_pb2.SUBMITTER_ROLE_REIMBURSER, "r")
    )
    number = "26440000000000000001"
    invoice_id = invoice_id_for_number(number)
    transactions = [
        _issue(invoice_id, number),
        _issue(invoice_id, number),
        _lock(invoice_id, "ORG-A"),
        _lock(invoice_id, "ORG-B"),
        _unlock(invoice_id, "ORG-B"),
        _partial(invoice_id, 10_001),
        ledger_pb2.SignedTransaction(body=b"\xff\xff"),
        _lock(invoice_id, "ORG-C", SigningKey.generate("stranger")),
    ]
    results = [view.run(signed, invoice_id) for signed in transactions]
    assert [(r.accepted, r.rejection_reason) for r in results] == [
        (True, ""),
        (False, "ALREADY_ISSUED"),
        (True, ""),
        (False, "ALREADY_LOCKED"),
        (False, "NOT_LOCK_HOLDER"),
        (False, "AMOUNT_EXCEEDED"),
        (False, "MALFORMED"),
        (False, "UNKNOWN_SUBMITTER_KEY"),
    ]
    for result in results:
        expected = PREFIX + result.rejection_reason if result.rejection_reason else "REJECTION_REASON_UNSPECIFIED"
        assert ledger_pb2.RejectionReason.Name(result.rejection_reason_code) == expected
    # The enum is part of the result bytes every validator signs under the results root: it round-trips.
    again = ledger_pb2.TransactionResult.FromString(results[3].SerializeToString(deterministic=True))
    assert again.rejection_reason_code == ledger_pb2.REJECTION_REASON_ALREADY_LOCKED
