"""The immutable facts about an invoice that authorization needs, read from the ledger's state of it."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.invoice_ids import invoice_id_for_number
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class InvoiceFacts:
    invoice_id: str
    invoice_number: str
    # The ledger's own rule (state machine): a buyer with a tax id reserves the invoice for that tax id
    # (a company, or a person invoiced under a code); any registered organisation may take the others.
    buyer_tax_id: str

    def are_of(self, invoice_number: str) -> bool:
        """Whether these facts belong to `invoice_number`: the ledger accepts an ISSUE only under the id
        derived from its number, so facts naming another number or id come from a faulty answer."""
        return self.invoice_number == invoice_number and self.invoice_id == invoice_id_for_number(invoice_number)


def signed_invoice_from_receipt(receipt: ledger_pb2.Receipt) -> invoice_pb2.SignedInvoice | None:
    """The SignedInvoice inside an ISSUE receipt's transaction, or None if the bytes are not one."""
    try:
        signed_tx = ledger_pb2.SignedTransaction.FromString(receipt.transaction)
        body = ledger_pb2.TransactionBody.FromString(signed_tx.body)
    except DecodeError:
        return None
    if body.type != ledger_pb2.TRANSACTION_TYPE_ISSUE or not body.HasField("issue"):
        return None
    return body.issue.invoice


def invoice_body(signed: invoice_pb2.SignedInvoice) -> invoice_pb2.InvoiceBody | None:
    try:
        return invoice_pb2.InvoiceBody.FromString(signed.body)
    except DecodeError:
        return None


def facts_of(state: ledger_pb2.InvoiceState) -> InvoiceFacts:
    """Facts from the ledger's state of the invoice (a `state_only` answer, or an ISSUE receipt's result)."""
    return InvoiceFacts(
        invoice_id=state.invoice_id, invoice_number=state.invoice_number, buyer_tax_id=state.buyer_tax_id
    )


class FactsCache:
    """Bounded LRU of invoice facts: they never change once issued, so a hit skips a ledger round trip."""

    def __init__(self, limit: int = 100_000) -> None:
        assert limit > 0
        self._items: OrderedDict[str, InvoiceFacts] = OrderedDict()
        self._limit = limit

    def get(self, invoice_number: str) -> InvoiceFacts | None:
        facts = self._items.get(invoice_number)
        if facts is not None:
            self._items.move_to_end(invoice_number)
        return facts

    def put(self, facts: InvoiceFacts) -> None:
        self._items[facts.invoice_number] = facts
        self._items.move_to_end(facts.invoice_number)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)
