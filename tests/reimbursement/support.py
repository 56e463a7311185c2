"""Test helpers: tax ids, certificates, invoices, mTLS channels."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field

import grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.reimbursement.v1 import reimbursement_service_pb2_grpc as rpb_grpc
from fapiao_runtime.ledger_client import SigningKey
from fapiao_runtime.pki import IssuedCertificate, create_ca, issue_organisation_certificate, issue_server_certificate
from fapiao_runtime.tax_id import uscc_check_char

_serial = itertools.count(1)


def new_tax_id() -> str:
    """A fresh valid unified social credit code (GB 32100-2015 check character)."""
    first17 = f"91440300{next(_serial):09d}"
    return first17 + uscc_check_char(first17)


_invoice_serial = itertools.count(1)


def new_invoice_number() -> str:
    return f"2644{1}{uuid.uuid4().int % 10**15:015d}"


@dataclass
class Pki:
    ca: IssuedCertificate = field(default_factory=create_ca)
    other_ca: IssuedCertificate = field(default_factory=lambda: create_ca("Some Other CA"))
    _orgs: dict[tuple[str, bool], IssuedCertificate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server = issue_server_certificate(self.ca, "reimbursement")

    def org_cert(self, tax_id: str, *, other_ca: bool = False) -> IssuedCertificate:
        key = (tax_id, other_ca)
        if key not in self._orgs:
            self._orgs[key] = issue_organisation_certificate(
                self.other_ca if other_ca else self.ca, tax_id, f"Company {tax_id[-6:]}"
            )
        return self._orgs[key]

    def channel(self, port: int, tax_id: str | None, *, other_ca: bool = False) -> grpc.aio.Channel:
        """A mutual-TLS channel as organisation `tax_id` (None: TLS without a client certificate)."""
        if tax_id is None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca.cert_pem)
        else:
            cert = self.org_cert(tax_id, other_ca=other_ca)
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.ca.cert_pem, private_key=cert.key_pem, certificate_chain=cert.cert_pem
            )
        return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)

    def stub(self, channel: grpc.aio.Channel) -> rpb_grpc.ReimbursementServiceStub:
        return rpb_grpc.ReimbursementServiceStub(channel)


@dataclass
class Issuer:
    """A seller with a registered signing key, producing signed invoices."""

    tax_id: str = field(default_factory=new_tax_id)
    key: SigningKey = field(default_factory=lambda: SigningKey.generate(f"issuer-{uuid.uuid4().hex[:8]}"))

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
        body = invoice_pb2.InvoiceBody(
            invoice_id=str(uuid.uuid4()),
            invoice_number=number or new_invoice_number(),
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
