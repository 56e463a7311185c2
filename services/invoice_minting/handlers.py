"""Use cases of invoice_minting, independent of transport: one function per RPC and per consumed event.

Entry points (grpc_api for the RPCs, events for the Kafka topics) decode their input and call these.
An RPC's use case is one unit of work (`UnitOfWork`); an event's runs in the consumer's transaction,
with the processed-event row, so its effect is applied exactly once. All SQL is the store's; the two
larger units of work live in their own modules: claims (decide, number, sign and submit claims, many
per transaction) and red_letter (reverse an invoice).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.envelope import make_envelope, outgoing
from fapiao_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from fapiao_runtime.tax_id import validate_uscc
from fapiao_runtime.topics import INVOICES
from fapiao_runtime.vocabulary import claim_token_hash

from invoice_minting import red_letter
from invoice_minting.buyer import check_text
from invoice_minting.claims import ClaimCommand, ClaimPipeline
from invoice_minting.deps import MintingDeps
from invoice_minting.invoice_format import REGION_CODE
from invoice_minting.offer_waiter import OfferWaiter
from invoice_minting.qr_codes import claim_url
from invoice_minting.store import IssuerKeyRow, MintingStore, SubmissionStatus, UnitOfWork, after_seq
from invoice_minting.tax import ALLOWED_TAX_RATES_BP, check_payment_items

# 32 random bytes -> 43 URL-safe characters: 256 bits, far above the 128-bit floor.
TOKEN_BYTES = 32
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200
MAX_TEXT_CHARS = 200


@dataclass(frozen=True)
class OfferWithLink:
    """A claim offer (store row) and the claim URL its token opens."""

    offer: asyncpg.Record
    claim_url: str


class MintingHandlers:
    """The RPCs' use cases, each one unit of work."""

    def __init__(
        self, uow: UnitOfWork, deps: MintingDeps, claims: ClaimPipeline, offers: OfferWaiter | None = None
    ) -> None:
        self._uow = uow
        self._deps = deps
        self._claims = claims
        # Without a running listener, waiting calls re-read every FALLBACK_POLL_S.
        self._offers = offers or OfferWaiter("")

    async def get_claim_offer(self, claim_token_hash: bytes) -> asyncpg.Record:
        """The offer of a token; NotFound UNKNOWN_TOKEN, FailedPrecondition PAYMENT_REFUNDED / TOKEN_EXPIRED
        (an offer already claimed is shown whatever happened to it since)."""
        async with self._uow.reading() as store:
            row = await store.offer_by_token(claim_token_hash)
        if row is None:
            raise NotFound("UNKNOWN_TOKEN", "no claim offer for this token")
        if row["invoice_id"] is None and row["refunded_fen"] >= row["amount_fen"]:
            raise FailedPrecondition("PAYMENT_REFUNDED", "the payment was refunded in full")
        if row["invoice_id"] is None and row["expires_at"] <= dt.datetime.now(dt.UTC):
            raise FailedPrecondition("TOKEN_EXPIRED", "the claim offer has expired")
        return row

    async def claim_invoice(self, command: ClaimCommand) -> invoice_pb2.Invoice:
        """Mint the invoice of a claim (group-committed with concurrent claims); see ClaimPipeline.claim."""
        return await self._claims.claim(command)

    async def get_invoice(self, *, invoice_id: str = "", invoice_number: str = "") -> invoice_pb2.Invoice:
        """By id or number; raises NotFound INVOICE_NOT_FOUND or InvalidArgument MISSING_LOOKUP."""
        if not invoice_id and not invoice_number:
            raise InvalidArgument("MISSING_LOOKUP", "give invoice_id or invoice_number")
        parsed: uuid.UUID | None = None
        if invoice_id:
            try:
                parsed = uuid.UUID(invoice_id)
            except ValueError:
                raise NotFound("INVOICE_NOT_FOUND", "no such invoice") from None
        async with self._uow.reading() as store:
            invoice = await (
                store.invoice_by_id(parsed) if parsed is not None else store.invoice_by_number(invoice_number)
            )
        if invoice is None:
            raise NotFound("INVOICE_NOT_FOUND", "no such invoice")
        return invoice

    async def list_invoices(
        self, *, buyer_tax_id: str = "", merchant_id: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[invoice_pb2.Invoice], str]:
        """Invoices of a buyer or a merchant, oldest first, keyset-paginated; and the next page token.

        Raises InvalidArgument MISSING_FILTER, INVALID_PAGE_SIZE or INVALID_PAGE_TOKEN.
        """
        if page_size < 0 or page_size > PAGE_SIZE_MAX:
            raise InvalidArgument("INVALID_PAGE_SIZE", f"page_size must be 0..{PAGE_SIZE_MAX}")
        after = after_seq(page_token)
        if not buyer_tax_id and not merchant_id:
            raise InvalidArgument("MISSING_FILTER", "give buyer_tax_id or merchant_id")
        async with self._uow.reading() as store:
            return await store.invoice_page(
                buyer_tax_id=buyer_tax_id, merchant_id=merchant_id, after=after, size=page_size or PAGE_SIZE_DEFAULT
            )

    async def red_letter_invoice(
        self, *, merchant_id: str, invoice_number: str, amount_fen: int, reason: str, idempotency_key: str
    ) -> tuple[invoice_pb2.Invoice, invoice_pb2.Invoice]:
        """(red letter, original); the errors of red_letter.reverse, MISSING_FIELD without merchant or number."""
        if not merchant_id or not invoice_number:
            raise InvalidArgument("MISSING_FIELD", "merchant_id and invoice_number are required")
        async with self._uow.transaction() as store:
            return await red_letter.reverse(
                store,
                self._deps,
                merchant_id=merchant_id,
                invoice_number_text=invoice_number,
                amount_fen=amount_fen,
                reason=reason,
                idempotency_key=idempotency_key,
                request_hash=red_letter.request_hash(invoice_number, amount_fen, reason),
                now=dt.datetime.now(dt.UTC),
            )

    async def get_claim_offer_by_payment(self, *, payment_id: str, merchant_id: str, wait_s: float) -> OfferWithLink:
        """The offer of a payment and its claim URL, waiting up to `wait_s` (capped) for it to be created.
        Raises NotFound OFFER_NOT_FOUND."""

        async def fetch() -> asyncpg.Record | None:
            async with self._uow.reading() as store:
                return await store.offer_by_payment(payment_id, merchant_id)

        row = await (self._offers.wait_for(payment_id, fetch, wait_s) if wait_s > 0 else fetch())
        if row is None:
            raise NotFound("OFFER_NOT_FOUND", "no claim offer for this payment")
        token = self._deps.box.open(row["token_sealed"], row["offer_id"].bytes).decode()
        return OfferWithLink(row, claim_url(self._deps.settings.claim_base_url, token))

    async def rotate_issuer_key(self, merchant_id: str) -> IssuerKeyRow:
        """Retire the merchant's active key and register a new one; NotFound MERCHANT_NOT_FOUND."""
        async with self._uow.transaction() as store:
            tax_id = await store.lock_merchant_tax_id(merchant_id)
            if tax_id is None:
                raise NotFound("MERCHANT_NOT_FOUND", "unknown merchant")
            key_id = await self._deps.keys.create_key(store, merchant_id, tax_id)
            keys = await store.issuer_keys(merchant_id)
        return next(k for k in keys if k.key_id == key_id)

    async def list_issuer_keys(self, merchant_id: str) -> list[IssuerKeyRow]:
        """Every key of the merchant, oldest first; NotFound MERCHANT_NOT_FOUND when it has none."""
        async with self._uow.reading() as store:
            keys = await store.issuer_keys(merchant_id)
        if not keys:
            raise NotFound("MERCHANT_NOT_FOUND", "no issuer keys for this merchant")
        return keys


# --- consumed events (merchants.v1, payments.v1, ledger.results.v1) --------------------------------
# Raising FapiaoError from these dead-letters a permanently bad event.


async def register_merchant(store: MintingStore, event: payments_pb2.MerchantRegistered, deps: MintingDeps) -> None:
    """Upsert the issuer profile; create an issuer key for a new merchant or a changed tax id.

    Raises InvalidArgument: INVALID_TAX_ID, INVALID_REGION_CODE, INVALID_TAX_RATE, INVALID_MERCHANT.
    """
    if not event.merchant_id or not event.legal_name or not event.default_tax_classification_code:
        raise InvalidArgument("INVALID_MERCHANT", "merchant_id, legal_name and a default classification are required")
    for text in (event.merchant_id, event.legal_name, event.default_item_name, event.default_tax_classification_code):
        check_text(text, "merchant field")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidArgument("INVALID_MERCHANT", "merchant field too long")
    tax_id = validate_uscc(event.tax_id)
    if not REGION_CODE.fullmatch(event.region_code):
        raise InvalidArgument("INVALID_REGION_CODE", "region_code must be 2 digits")
    if event.default_tax_rate_bp not in ALLOWED_TAX_RATES_BP:
        raise InvalidArgument("INVALID_TAX_RATE", "default tax rate not allowed")
    previous = await store.lock_merchant_tax_id(event.merchant_id)
    await store.upsert_merchant(
        payments_pb2.MerchantRegistered(
            merchant_id=event.merchant_id,
            legal_name=event.legal_name,
            tax_id=tax_id,
            region_code=event.region_code,
            default_tax_classification_code=event.default_tax_classification_code,
            default_item_name=event.default_item_name or event.legal_name,
            default_tax_rate_bp=event.default_tax_rate_bp,
        )
    )
    if previous != tax_id:
        # A key registration names the seller's tax id, so a changed tax id needs a new key.
        await deps.keys.create_key(store, event.merchant_id, tax_id)


def _new_offer(payment: payments_pb2.Payment, deps: MintingDeps) -> tuple[str, tuple[object, ...]]:
    """A new claim token and the claim_offers row of a payment (values in store.OFFER_COLUMNS order).

    Raises InvalidArgument: INVALID_PAYMENT, INVALID_AMOUNT, AMOUNT_MISMATCH, INVALID_TAX_RATE, ...
    """
    if not payment.payment_id or not payment.merchant_id:
        raise InvalidArgument("INVALID_PAYMENT", "payment_id and merchant_id are required")
    check_payment_items(payment.amount_fen, payment.items)
    for item in payment.items:
        check_text(item.name, "item name")
        check_text(item.tax_classification_code, "tax classification code")
        if len(item.name) > MAX_TEXT_CHARS or len(item.tax_classification_code) > MAX_TEXT_CHARS:
            raise InvalidArgument("INVALID_PAYMENT", f"item texts are limited to {MAX_TEXT_CHARS} characters")
    paid_at = (
        payment.success_time.ToDatetime(tzinfo=dt.UTC) if payment.HasField("success_time") else dt.datetime.now(dt.UTC)
    )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    offer_id = uuid.uuid4()
    row = (
        offer_id,
        payment.payment_id,
        payment.merchant_id,
        claim_token_hash(token),
        deps.box.seal(token.encode(), offer_id.bytes),
        payment.amount_fen,
        payment.SerializeToString(deterministic=True),
        paid_at,
    )
    return token, row


async def create_offers(store: MintingStore, payments: list[payments_pb2.Payment], deps: MintingDeps) -> None:
    """The claim offers of successful payments, in one statement (a payment with an offer keeps it).

    Raises InvalidArgument (any payment of the batch): see create_offer.
    """
    await store.insert_offers([_new_offer(p, deps)[1] for p in payments], deps.settings.offer_ttl_s)


async def create_offer(store: MintingStore, payment: payments_pb2.Payment, deps: MintingDeps) -> str | None:
    """Create the claim offer of a payment; return its token (None if the payment already has an offer).

    Raises InvalidArgument: INVALID_PAYMENT, INVALID_AMOUNT, AMOUNT_MISMATCH, INVALID_TAX_RATE, ...
    """
    token, row = _new_offer(payment, deps)
    inserted = await store.insert_offers([row], deps.settings.offer_ttl_s)
    return token if inserted else None


async def apply_refund(store: MintingStore, event: payments_pb2.PaymentRefunded, deps: MintingDeps) -> None:
    """Before the claim: remember the refunded total (a full refund voids the offer). After: red letter.

    Raises InvalidArgument INVALID_AMOUNT, NotFound OFFER_NOT_FOUND or the red letter's errors.
    """
    refund = event.refund
    if refund.refund_fen <= 0:
        raise InvalidArgument("INVALID_AMOUNT", "refund_fen must be positive")
    offer = await store.lock_offer_of_payment(refund.payment_id)
    if offer is None:
        raise NotFound("OFFER_NOT_FOUND", "no offer for the refunded payment")
    if offer["invoice_id"] is None:
        refunded = min(offer["amount_fen"], max(event.payment.refunded_fen, offer["refunded_fen"] + refund.refund_fen))
        await store.set_offer_refunded(offer["offer_id"], refunded)
        return
    await red_letter.reverse(
        store,
        deps,
        merchant_id=offer["merchant_id"],
        invoice_id=offer["invoice_id"],
        amount_fen=refund.refund_fen,
        reason="SALES_RETURN",
        idempotency_key=f"refund:{refund.refund_id}",
        request_hash=hashlib.sha256(refund.SerializeToString(deterministic=True)).digest(),
        now=dt.datetime.now(dt.UTC),
    )


async def apply_ledger_results(
    store: MintingStore, results: dict[uuid.UUID, ledger_pb2.TransactionResult], producer: str
) -> None:
    """Apply the ledger's first result of each transaction, with one statement per kind of change.

    Only PENDING transactions change. ISSUE accepted: the invoice becomes ISSUED (unless a red letter's
    outcome already moved it on) and InvoiceIssued is queued; rejected: REJECTED with the ledger's
    reason. Results of one invoice may arrive in any order (the results topic is keyed by transaction
    id) and each outcome is written to be correct in any order, so the ISSUE outcomes are applied
    together, after the red-letter outcomes. Results of transactions this service did not submit
    (LOCK, CLOSE, ... by reimbursement) match no row and change nothing.
    """
    changed = await store.decide_transactions(
        [
            (transaction_id, SubmissionStatus.ACCEPTED if r.accepted else SubmissionStatus.REJECTED, r.rejection_reason)
            for transaction_id, r in results.items()
        ]
    )
    issued: dict[uuid.UUID, ledger_pb2.TransactionResult] = {}
    refused: dict[uuid.UUID, ledger_pb2.TransactionResult] = {}
    for tx in changed:
        result = results[tx["transaction_id"]]
        if tx["type"] != ledger_pb2.TRANSACTION_TYPE_ISSUE:
            await _red_letter_outcome(store, tx, result)
        elif result.accepted:
            issued.setdefault(tx["invoice_id"], result)
        else:
            refused.setdefault(tx["invoice_id"], result)
    if issued:
        ids = list(issued)
        await store.mark_issued([(i, issued[i].chain_id, issued[i].height) for i in ids])
        invoices = await store.invoices_by_id(ids)
        await store.enqueue(
            [
                outgoing(
                    INVOICES.name,
                    make_envelope(
                        invoice_pb2.InvoiceIssued(invoice=invoices[i]), aggregate_id=str(i), producer=producer
                    ),
                )
                for i in ids
            ]
        )
    if refused:
        await store.mark_rejected([(i, r.rejection_reason or "REJECTED") for i, r in refused.items()])


async def _red_letter_outcome(store: MintingStore, tx: asyncpg.Record, result: ledger_pb2.TransactionResult) -> None:
    if result.accepted:
        await store.red_letter_accepted(
            tx["red_letter_invoice_id"],
            tx["invoice_id"],
            chain_id=result.chain_id,
            height=result.height,
            cancels=tx["type"] == ledger_pb2.TRANSACTION_TYPE_CANCEL,
        )
    else:
        await store.red_letter_rejected(
            tx["red_letter_invoice_id"],
            tx["invoice_id"],
            reason=result.rejection_reason or "REJECTED",
            amount_fen=tx["amount_fen"],
        )
