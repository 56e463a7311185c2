"""gRPC entry point of invoice_minting: decode each request, hand it to its handler, encode the answer.

Requests are decoded by the runtime's policy (fapiao_runtime.grpc_server): undecodable bytes and text
no field may hold are refused there with INVALID_ARGUMENT before a method runs.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import NotFound
from fapiao_runtime.vocabulary import CLAIM_TOKEN_PATTERN, claim_token_hash
from google.protobuf.timestamp_pb2 import Timestamp

from invoice_minting.buyer import check_idempotency_key, check_text, normalise_buyer
from invoice_minting.claims import ClaimCommand
from invoice_minting.handlers import MintingHandlers
from invoice_minting.qr_codes import qr_png, qr_svg
from invoice_minting.store import IssuerKeyRow

SERVICE_NAME = "fapiao.invoicing.v1.InvoiceMintingService"
# A waiting GetClaimOfferByPayment answers this much before the caller's deadline.
DEADLINE_MARGIN_S = 0.05


def _timestamp(at: dt.datetime | None) -> Timestamp | None:
    if at is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _token_hash(token: str) -> bytes:
    # Anything that cannot be a token we issued is simply unknown: no format oracle.
    if not CLAIM_TOKEN_PATTERN.fullmatch(token):
        raise NotFound("UNKNOWN_TOKEN", "no claim offer for this token")
    return claim_token_hash(token)


def _offer_proto(row: asyncpg.Record) -> api.ClaimOffer:
    payment = payments_pb2.Payment.FromString(row["payment"])
    return api.ClaimOffer(
        merchant_id=row["merchant_id"],
        merchant_name=row["legal_name"] or "",
        amount_fen=row["amount_fen"],
        paid_at=_timestamp(row["paid_at"]),
        items=payment.items,
        expires_at=_timestamp(row["expires_at"]),
        claimed=row["invoice_id"] is not None,
        payment_id=row["payment_id"],
    )


def _key_proto(row: IssuerKeyRow) -> api.IssuerKey:
    return api.IssuerKey(
        key_id=row.key_id,
        merchant_id=row.merchant_id,
        public_key=row.public_key,
        active=row.active,
        created_at=_timestamp(row.created_at),
        retired_at=_timestamp(row.retired_at),
    )


class InvoiceMintingServicer(api_grpc.InvoiceMintingServiceServicer):
    def __init__(self, handlers: MintingHandlers) -> None:
        self._handlers = handlers

    async def GetClaimOffer(self, request: api.GetClaimOfferRequest, context: object) -> api.GetClaimOfferResponse:
        row = await self._handlers.get_claim_offer(_token_hash(request.claim_token))
        return api.GetClaimOfferResponse(offer=_offer_proto(row))

    async def ClaimInvoice(self, request: api.ClaimInvoiceRequest, context: object) -> api.ClaimInvoiceResponse:
        buyer = normalise_buyer(request.buyer)
        key = check_idempotency_key(request.idempotency_key)
        hashed = _token_hash(request.claim_token)
        invoice = await self._handlers.claim_invoice(ClaimCommand(token_hash=hashed, buyer=buyer, idempotency_key=key))
        return api.ClaimInvoiceResponse(invoice=invoice)

    async def GetInvoice(self, request: api.GetInvoiceRequest, context: object) -> api.GetInvoiceResponse:
        invoice = await self._handlers.get_invoice(invoice_id=request.invoice_id, invoice_number=request.invoice_number)
        return api.GetInvoiceResponse(invoice=invoice)

    async def ListInvoices(self, request: api.ListInvoicesRequest, context: object) -> api.ListInvoicesResponse:
        invoices, next_token = await self._handlers.list_invoices(
            buyer_tax_id=request.buyer_tax_id,
            merchant_id=request.merchant_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListInvoicesResponse(invoices=invoices, next_page_token=next_token)

    async def RedLetterInvoice(
        self, request: api.RedLetterInvoiceRequest, context: object
    ) -> api.RedLetterInvoiceResponse:
        key = check_idempotency_key(request.idempotency_key)
        check_text(request.merchant_id, "merchant_id")
        red, original = await self._handlers.red_letter_invoice(
            merchant_id=request.merchant_id,
            invoice_number=request.invoice_number,
            amount_fen=request.amount_fen,
            reason=request.reason,
            idempotency_key=key,
        )
        return api.RedLetterInvoiceResponse(red_letter_invoice=red, original_invoice=original)

    async def GetClaimOfferByPayment(
        self, request: api.GetClaimOfferByPaymentRequest, context: object
    ) -> api.GetClaimOfferByPaymentResponse:
        wait_s = request.wait_ms / 1000
        remaining = getattr(context, "time_remaining", lambda: None)() if request.wait_ms else None
        if remaining is not None:
            wait_s = min(wait_s, remaining - DEADLINE_MARGIN_S)
        found = await self._handlers.get_claim_offer_by_payment(
            payment_id=request.payment_id, merchant_id=request.merchant_id, wait_s=wait_s
        )
        response = api.GetClaimOfferByPaymentResponse(offer=_offer_proto(found.offer), claim_url=found.claim_url)
        if not request.omit_qr_code:
            response.claim_qr_png = qr_png(found.claim_url)
            response.claim_qr_svg = qr_svg(found.claim_url)
        return response

    async def RotateIssuerKey(
        self, request: api.RotateIssuerKeyRequest, context: object
    ) -> api.RotateIssuerKeyResponse:
        return api.RotateIssuerKeyResponse(key=_key_proto(await self._handlers.rotate_issuer_key(request.merchant_id)))

    async def ListIssuerKeys(self, request: api.ListIssuerKeysRequest, context: object) -> api.ListIssuerKeysResponse:
        keys = await self._handlers.list_issuer_keys(request.merchant_id)
        return api.ListIssuerKeysResponse(keys=[_key_proto(k) for k in keys])
