"""Test helpers: an issuer of signed invoices; tax ids, certificates and channels come from the devstack."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.invoice_ids import invoice_id_for_number
from fapiao_runtime.ledger_client import SigningKey
from fapiao_stack.devstack import Pki, new_invoice_number, new_tax_id


@dataclass
class Issuer:
    """A seller with a registered signing key, producing signed invoices."""

    tax_id: str = field(default_factory=new_tax_id)
    key: SigningKey = field(default_factory=lambda: SigningKey.generate(f"issuer-{uuid.uuid4().hex[:8]}"))

    def registration(self, registration_id: str) -> ledger_pb2.KeyRegistration:
        """The registration of this issuer's key, as the registry authority publishes it."""
        return ledger_pb2.KeyRegistration(
            key_id=self.key.key_id,
            public_key=self.key.public_raw,
            role=ledger_pb2.SUBMITTER_ROLE_ISSUER,
            subject=self.tax_id,
            registration_id=registration_id,
        )

    def invoice(
        self,
        buyer_tax_id: str | None,
        total_fen: int = 11_200,
        issue_date: str = "20261124",
        number: str | None = None,
        forge: bool = False,
    ) -> invoice_pb2.SignedInvoice:
        """A signed invoice; buyer_tax_id None = a personal invoice. forge=True: bad signature."""
        buyer = (
            invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="Buyer Co", tax_id=buyer_tax_id)
            if buyer_tax_id
            else invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="Zhang San")
        )
        number = number or new_invoice_number()
        body = invoice_pb2.InvoiceBody(
            invoice_id=invoice_id_for_number(number),
            invoice_number=number,
            kind=invoice_pb2.INVOICE_KIND_ORDINARY,
            seller=invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_COMPANY, name="Seller Ltd", tax_id=self.tax_id),
            buyer=buyer,
            total_amount_fen=total_fen - total_fen * 6 // 106,
            total_tax_fen=total_fen * 6 // 106,
            total_fen=total_fen,
            issue_date=issue_date,
        ).SerializeToString(deterministic=True)
        signature = self.key.sign(body)
        if forge:
            signature.signature = bytes(64)
        return invoice_pb2.SignedInvoice(body=body, signature=signature)


__all__ = ["Issuer", "Pki", "new_invoice_number", "new_tax_id"]
