"""gRPC edge of invoice_minting: parse input, hand it to a handler, map the result.

Requests are decoded by the runtime's policy (fapiao_runtime.grpc_server): undecodable bytes and text
no field may hold are refused there with INVALID_ARGUMENT before a method runs.
"""

from __future__ import annotations

import datetime as dt
import re

import asyncpg
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as api_grpc
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from fapiao_runtime.vocabulary import claim_token_hash
from google.protobuf.timestamp_pb2 import Timestamp

from invoice_minting import red_letter
from invoice_minting.buyer import check_idempotency_key, check_text, normalise_buyer
from invoice_minting.claims import ClaimCommand, ClaimPipeline
from invoice_minting.deps import MintingDeps
from invoice_minting.invoice_store import get_invoice, list_invoices
from invoice_minting.issuer_keys import IssuerKeyRow
from invoice_minting.offer_waiter import OfferWaiter
from invoice_minting.qr_codes import claim_url, qr_png, qr_svg

SERVICE_NAME = "fapiao.invoicing.v1.InvoiceMintingService"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,128}")


def _timestamp(at: dt.datetime | None) -> Timestamp | None:
    if at is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _token_hash(token: str) -> bytes:
    # Anything that cannot be a token we issued is simply unknown: no format oracle.
    if not TOKEN_PATTERN.fullmatch(token):
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


_OFFER_SELECT = "SELECT o.*, m.legal_name FROM claim_offers o LEFT JOIN merchants m ON m.merchant_id = o.merchant_id"


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
    def __init__(
        self, pool: asyncpg.Pool, deps: MintingDeps, claims: ClaimPipeline, offers: OfferWaiter | None = None
    ) -> None:
        self._pool = pool
        self._deps = deps
        self._claims = claims
        # Without a running listener, waiting calls re-read every FALLBACK_POLL_S.
        self._offers = offers or OfferWaiter("")

    async def GetClaimOffer(self, request: api.GetClaimOfferRequest, context: object) -> api.GetClaimOfferResponse:
        hashed = _token_hash(request.claim_token)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_OFFER_SELECT + " WHERE o.token_hash = $1", hashed)
        if row is None:
            raise NotFound("UNKNOWN_TOKEN", "no claim offer for this token")
        if row["invoice_id"] is None and row["refunded_fen"] >= row["amount_fen"]:
            raise FailedPrecondition("PAYMENT_REFUNDED", "the payment was refunded in full")
        if row["invoice_id"] is None and row["expires_at"] <= dt.datetime.now(dt.UTC):
            raise FailedPrecondition("TOKEN_EXPIRED", "the claim offer has expired")
        return api.GetClaimOfferResponse(offer=_offer_proto(row))

    async def ClaimInvoice(self, request: api.ClaimInvoiceRequest, context: object) -> api.ClaimInvoiceResponse:
        buyer = normalise_buyer(request.buyer)
        key = check_idempotency_key(request.idempotency_key)
        hashed = _token_hash(request.claim_token)
        invoice = await self._claims.claim(ClaimCommand(token_hash=hashed, buyer=buyer, idempotency_key=key))
        return api.ClaimInvoiceResponse(invoice=invoice)

    async def GetInvoice(self, request: api.GetInvoiceRequest, context: object) -> api.GetInvoiceResponse:
        async with self._pool.acquire() as conn:
            invoice = await get_invoice(conn, invoice_id=request.invoice_id, invoice_number=request.invoice_number)
        return api.GetInvoiceResponse(invoice=invoice)

    async def ListInvoices(self, request: api.ListInvoicesRequest, context: object) -> api.ListInvoicesResponse:
        async with self._pool.acquire() as conn:
            invoices, next_token = await list_invoices(
                conn,
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
        if not request.merchant_id or not request.invoice_number:
            raise InvalidArgument("MISSING_FIELD", "merchant_id and invoice_number are required")
        async with self._pool.acquire() as conn, conn.transaction():
            red, original = await red_letter.reverse(
                conn,
                self._deps,
                merchant_id=request.merchant_id,
                invoice_number_text=request.invoice_number,
                amount_fen=request.amount_fen,
                reason=request.reason,
                idempotency_key=key,
                request_hash=red_letter.request_hash(request.invoice_number, request.amount_fen, request.reason),
                now=dt.datetime.now(dt.UTC),
            )
        return api.RedLetterInvoiceResponse(red_letter_invoice=red, original_invoice=original)

    async def GetClaimOfferByPayment(
        self, request: api.GetClaimOfferByPaymentRequest, context: object
    ) -> api.GetClaimOfferByPaymentResponse:

        async def fetch() -> asyncpg.Record | None:
            async with self._pool.acquire() as conn:
                row: asyncpg.Record | None = await conn.fetchrow(
                    _OFFER_SELECT + " WHERE o.payment_id = $1 AND o.merchant_id = $2",
                    request.payment_id,
                    request.merchant_id,
                )
            return row

        if request.wait_ms:
            remaining = getattr(context, "time_remaining", lambda: None)()
            wait_s = request.wait_ms / 1000 if remaining is None else min(request.wait_ms / 1000, remaining - 0.05)
            row = await self._offers.wait_for(request.payment_id, fetch, wait_s)
        else:
            row = await fetch()
        if row is None:
            raise NotFound("OFFER_NOT_FOUND", "no claim offer for this payment")
        token = self._deps.box.open(row["token_sealed"], row["offer_id"].bytes).decode()
        url = claim_url(self._deps.settings.claim_base_url, token)
        response = api.GetClaimOfferByPaymentResponse(offer=_offer_proto(row), claim_url=url)
        if not request.omit_qr_code:
            response.claim_qr_png = qr_png(url)
            response.claim_qr_svg = qr_svg(url)
        return response

    async def RotateIssuerKey(
        self, request: api.RotateIssuerKeyRequest, context: object
    ) -> api.RotateIssuerKeyResponse:
        async with self._pool.acquire() as conn, conn.transaction():
            tax_id = await conn.fetchval(
                "SELECT tax_id FROM merchants WHERE merchant_id = $1 FOR UPDATE", request.merchant_id
            )
            if tax_id is None:
                raise NotFound("MERCHANT_NOT_FOUND", "unknown merchant")
            key_id = await self._deps.keys.create_key(conn, request.merchant_id, tax_id)
            keys = await self._deps.keys.list_keys(conn, request.merchant_id)
        return api.RotateIssuerKeyResponse(key=next(_key_proto(k) for k in keys if k.key_id == key_id))

    async def ListIssuerKeys(self, request: api.ListIssuerKeysRequest, context: object) -> api.ListIssuerKeysResponse:
        async with self._pool.acquire() as conn:
            keys = await self._deps.keys.list_keys(conn, request.merchant_id)
        if not keys:
            raise NotFound("MERCHANT_NOT_FOUND", "no issuer keys for this merchant")
        return api.ListIssuerKeysResponse(keys=[_key_proto(k) for k in keys])
