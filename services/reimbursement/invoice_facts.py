"""The immutable facts about an invoice that authorization needs, read from the ledger's issue receipt."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from google.protobuf.message import DecodeError

INVOICE_NUMBER_DIGITS = 20


@dataclass(frozen=True)
class InvoiceFacts:
    invoice_id: str
    invoice_number: str
    buyer_is_company: bool
    buyer_tax_id: str


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


def facts_of(response: ledger_service_pb2.GetInvoiceStateResponse) -> InvoiceFacts:
    """Facts from the issue receipt's invoice when present, else from the state (a buyer with a tax id is
    then treated as a company, the stricter reading)."""
    state = response.state
    if response.HasField("issue_receipt"):
        signed = signed_invoice_from_receipt(response.issue_receipt)
        body = invoice_body(signed) if signed is not None else None
        if body is not None:
            return InvoiceFacts(
                invoice_id=state.invoice_id or body.invoice_id,
                invoice_number=state.invoice_number or body.invoice_number,
                buyer_is_company=body.buyer.kind == invoice_pb2.PARTY_KIND_COMPANY,
                buyer_tax_id=body.buyer.tax_id,
            )
    return InvoiceFacts(
        invoice_id=state.invoice_id,
        invoice_number=state.invoice_number,
        buyer_is_company=bool(state.buyer_tax_id),
        buyer_tax_id=state.buyer_tax_id,
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
