"""A consistent little ledger for gateway tests: real Ed25519 signatures, real RFC 6962 proofs.

Blocks are built the way validators build them (header over Merkle roots, each validator signs the
exact header bytes), so gateway.verification checks them exactly as it checks the real ledger's.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime import merkle
from fapiao_runtime.ledger_client import SigningKey, sign_transaction
from fapiao_runtime.ledger_trust import format_key_list
from gateway.qr_content import qr_check


def verification_qr(number: str, total_fen: int, issue_date: str) -> str:
    sign = "-" if total_fen < 0 else ""
    whole, cents = divmod(abs(total_fen), 100)
    head = f"01,32,,{number},{sign}{whole}.{cents:02d},{issue_date},,"
    return head + qr_check(head)


@dataclass
class InvoiceOnLedger:
    invoice_id: str
    number: str
    state: ledger_pb2.InvoiceState
    issue_receipt: ledger_pb2.Receipt
    receipt: ledger_pb2.Receipt


@dataclass
class LedgerWorld:
    validators: list[SigningKey] = field(
        default_factory=lambda: [SigningKey.generate(f"validator-{i}") for i in range(1, 5)]
    )
    reimburser: SigningKey = field(default_factory=lambda: SigningKey.generate("reimbursement-1"))
    issuer_keys: dict[str, list[SigningKey]] = field(default_factory=dict)
    invoices: dict[str, InvoiceOnLedger] = field(default_factory=dict)
    heights: dict[int, int] = field(default_factory=dict)
    previous_hash: dict[int, bytes] = field(default_factory=dict)
    sequence: int = 0

    def validator_keys_env(self) -> str:
        return format_key_list({key.key_id: key.public_raw for key in self.validators})

    def issuer_for(self, merchant_id: str) -> SigningKey:
        keys = self.issuer_keys.setdefault(merchant_id, [SigningKey.generate(f"issuer-{merchant_id}-1")])
        return keys[-1]

    def rotate_issuer(self, merchant_id: str) -> SigningKey:
        keys = self.issuer_keys.setdefault(merchant_id, [])
        key = SigningKey.generate(f"issuer-{merchant_id}-{len(keys) + 1}")
        keys.append(key)
        return key

    def next_number(self) -> str:
        self.sequence += 1
        return f"26440{self.sequence:015d}"

    def build_invoice(
        self,
        *,
        merchant_id: str,
        seller: invoice_pb2.Party,
        buyer: invoice_pb2.Party,
        lines: list[invoice_pb2.InvoiceLine],
        issue_date: str,
        invoice_id: str | None = None,
    ) -> invoice_pb2.Invoice:
        """A signed invoice body (not yet on the ledger)."""
        number = self.next_number()
        total_amount = sum(line.amount_fen for line in lines)
        total_tax = sum(line.tax_fen for line in lines)
        body = invoice_pb2.InvoiceBody(
            invoice_id=invoice_id or str(uuid.uuid4()),
            invoice_number=number,
            kind=invoice_pb2.INVOICE_KIND_ORDINARY,
            seller=seller,
            buyer=buyer,
            lines=lines,
            total_amount_fen=total_amount,
            total_tax_fen=total_tax,
            total_fen=total_amount + total_tax,
            issue_date=issue_date,
            merchant_id=merchant_id,
            payment_id=str(uuid.uuid4()),
            region_code="44",
            verification_qr=verification_qr(number, total_amount + total_tax, issue_date),
        )
        raw = body.SerializeToString(deterministic=True)
        signed = invoice_pb2.SignedInvoice(body=raw, signature=self.issuer_for(merchant_id).sign(raw))
        return invoice_pb2.Invoice(
            signed=signed, body=body, status=invoice_pb2.INVOICE_STATUS_PENDING, reimbursable_fen=body.total_fen
        )

    def commit(
        self,
        chain_id: int,
        signed_tx: ledger_pb2.SignedTransaction,
        result: ledger_pb2.TransactionResult,
        signers: int = 4,
    ) -> ledger_pb2.Receipt:
        """Commit `signed_tx` with `result` as the ledger would: cut a block of three transactions (two
        fillers around it) on `chain_id`, sign its header with `signers` validators, return the receipt."""
        height = self.heights.get(chain_id, 0) + 1
        self.heights[chain_id] = height
        index = 1
        result.chain_id, result.height, result.index = chain_id, height, index
        fillers = [hashlib.sha256(f"filler-{chain_id}-{height}-{i}".encode()).digest() for i in range(2)]
        txs = [fillers[0], signed_tx.SerializeToString(), fillers[1]]
        results = [fillers[1], result.SerializeToString(deterministic=True), fillers[0]]
        header = ledger_pb2.BlockHeader(
            chain_id=chain_id,
            height=height,
            previous_header_hash=self.previous_hash.get(chain_id, b"\0" * 32),
            transactions_root=merkle.root(txs),
            results_root=merkle.root(results),
            transaction_count=len(txs),
        )
        header_bytes = header.SerializeToString(deterministic=True)
        digest = hashlib.sha256(header_bytes).digest()
        self.previous_hash[chain_id] = digest
        signatures = [
            ledger_pb2.BlockSignature(
                chain_id=chain_id,
                height=height,
                header_hash=digest,
                validator_id=key.key_id,
                signature=key.sign(header_bytes),
            )
            for key in self.validators[:signers]
        ]
        return ledger_pb2.Receipt(
            transaction=txs[index],
            result=results[index],
            index=index,
            tree_size=len(txs),
            transaction_audit_path=merkle.inclusion_proof(txs, index),
            result_audit_path=merkle.inclusion_proof(results, index),
            header=header_bytes,
            signatures=signatures,
        )

    def issue(self, invoice: invoice_pb2.Invoice, *, signers: int = 4) -> InvoiceOnLedger:
        """Commit the ISSUE of `invoice` (signed by its issuer) in a final block."""
        body = invoice.body
        tx = ledger_pb2.TransactionBody(
            transaction_id=str(uuid.uuid4()),
            type=ledger_pb2.TRANSACTION_TYPE_ISSUE,
            invoice_id=body.invoice_id,
            issue=ledger_pb2.IssueAction(invoice=invoice.signed),
        )
        signed_tx = sign_transaction(tx, self.issuer_for(body.merchant_id))
        state = ledger_pb2.InvoiceState(
            invoice_id=body.invoice_id,
            invoice_number=body.invoice_number,
            status=ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED,
            total_fen=body.total_fen,
            reimbursable_fen=body.total_fen,
            buyer_tax_id=body.buyer.tax_id,
            seller_tax_id=body.seller.tax_id,
            issue_date=body.issue_date,
            last_transaction_id=tx.transaction_id,
        )
        result = ledger_pb2.TransactionResult(
            transaction_id=tx.transaction_id,
            invoice_id=body.invoice_id,
            type=tx.type,
            accepted=True,
            state=state,
        )
        receipt = self.commit(0, signed_tx, result, signers)
        record = InvoiceOnLedger(body.invoice_id, body.invoice_number, state, receipt, receipt)
        self.invoices[body.invoice_id] = record
        return record

    def transition(self, invoice_id: str, tx_type: int, status: int, organisation_tax_id: str = "") -> None:
        """Commit a LOCK / CLOSE / CANCEL-like transition and make it the invoice's latest receipt."""
        record = self.invoices[invoice_id]
        tx = ledger_pb2.TransactionBody(transaction_id=str(uuid.uuid4()), type=tx_type, invoice_id=invoice_id)
        if tx_type == ledger_pb2.TRANSACTION_TYPE_LOCK:
            tx.lock.organisation_tax_id = organisation_tax_id
        elif tx_type == ledger_pb2.TRANSACTION_TYPE_CLOSE:
            tx.close.organisation_tax_id = organisation_tax_id
        elif tx_type == ledger_pb2.TRANSACTION_TYPE_CANCEL:
            tx.cancel.reason = "SALES_RETURN"
        signed_tx = sign_transaction(tx, self.reimburser)
        state = ledger_pb2.InvoiceState()
        state.CopyFrom(record.state)
        state.status = status
        state.lock_holder_tax_id = organisation_tax_id
        state.last_transaction_id = tx.transaction_id
        if status == ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED:
            state.reimbursable_fen = 0
        result = ledger_pb2.TransactionResult(
            transaction_id=tx.transaction_id, invoice_id=invoice_id, type=tx_type, accepted=True, state=state
        )
        record.receipt = self.commit(0, signed_tx, result)
        record.state = state

    def state_response(
        self, *, invoice_id: str = "", invoice_number: str = ""
    ) -> ledger_service_pb2.GetInvoiceStateResponse | None:
        for record in self.invoices.values():
            if record.invoice_id == invoice_id or record.number == invoice_number:
                return ledger_service_pb2.GetInvoiceStateResponse(
                    state=record.state, receipt=record.receipt, issue_receipt=record.issue_receipt
                )
        return None
