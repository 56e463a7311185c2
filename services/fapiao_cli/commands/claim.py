"""fapiao claim: claim the invoice of a paid order, as the consumer's phone would."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import grpc
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_api
from fapiao.invoicing.v1 import invoice_pb2
from google.protobuf import json_format

from fapiao_cli import clients
from fapiao_cli.local import load_stack_environment
from fapiao_cli.main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, command_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    claim = subparsers.add_parser(
        "claim",
        help="claim an invoice with a claim URL or token",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog(
            'fapiao claim http://127.0.0.1:8080/claim/TOKEN --buyer-name "深圳测试科技有限公司"'
            " --buyer-tax-id 91440300MA5G4LPE1D",
            'fapiao claim TOKEN --person --buyer-name "张三"',
        ),
    )
    claim.add_argument("claim", help="the claim page URL (from the QR code) or the bare claim token")
    claim.add_argument("--buyer-name", required=True)
    claim.add_argument("--buyer-tax-id", default="", help="unified social credit code (required for a company)")
    claim.add_argument("--person", action="store_true", help="the buyer is a person (tax id optional)")
    claim.add_argument("--idempotency-key", default="", help="reuse to retry safely (default: new)")
    claim.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the ledger to commit")
    claim.set_defaults(handler=_claim)


async def claim_invoice(
    token: str, buyer: invoice_pb2.Party, idempotency_key: str | None = None
) -> invoice_pb2.Invoice:
    """ClaimInvoice over gRPC; raises grpc.aio.AioRpcError with the service's reason on rejection."""
    reply = await clients.minting().ClaimInvoice(
        minting_api.ClaimInvoiceRequest(
            claim_token=token, buyer=buyer, idempotency_key=idempotency_key or str(uuid.uuid4())
        ),
        timeout=10,
    )
    invoice: invoice_pb2.Invoice = reply.invoice
    return invoice


async def wait_until_committed(invoice_id: str, timeout_s: float) -> invoice_pb2.Invoice:
    """Poll GetInvoice until the invoice leaves PENDING (or the wait ends); return its latest view."""
    stub = clients.minting()
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await stub.GetInvoice(minting_api.GetInvoiceRequest(invoice_id=invoice_id), timeout=5)
        invoice: invoice_pb2.Invoice = reply.invoice
        if invoice.status != invoice_pb2.INVOICE_STATUS_PENDING or time.monotonic() > deadline:
            return invoice
        await asyncio.sleep(0.2)


def _claim(args: argparse.Namespace) -> int:
    load_stack_environment()
    kind = invoice_pb2.PARTY_KIND_PERSON if args.person else invoice_pb2.PARTY_KIND_COMPANY
    buyer = invoice_pb2.Party(kind=kind, name=args.buyer_name, tax_id=args.buyer_tax_id)

    async def go() -> int:
        try:
            invoice = await claim_invoice(clients.claim_token_of(args.claim), buyer, args.idempotency_key or None)
        except grpc.aio.AioRpcError as exc:
            code = EXIT_USAGE if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_FAILED
            raise CliError(f"claim refused: {clients.describe_refusal(exc)}", code) from None
        invoice = await wait_until_committed(invoice.body.invoice_id, args.wait)
        print(json_format.MessageToJson(invoice.body, ensure_ascii=False, indent=2))
        print(f"status: {invoice_pb2.InvoiceStatus.Name(invoice.status)}")
        return EXIT_OK if invoice.status == invoice_pb2.INVOICE_STATUS_ISSUED else EXIT_FAILED

    return asyncio.run(go())
