"""Claim flow: the page behind the QR code, the claim POST, and the claimer's invoice page and PDF.

Token rules: the claim token (from minting, in the QR) only opens its own offer and can claim it once;
after claiming, the browser is sent to /invoice/<view token>, a separate expiring HMAC token
(gateway.view_tokens). The claim page never shows a claimed invoice, so holding a claim token does not
reveal the buyer who used it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from aiohttp import web
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.errors import FailedPrecondition, FapiaoError, InvalidArgument
from fapiao_runtime.http_edge import retry_later
from fapiao_runtime.ledger_trust import ReceiptInvalid, verify_receipt
from fapiao_runtime.text import bad_character, check_text

from gateway.claim_pages import claim_form_page, invoice_page
from gateway.context import CONTEXT, GatewayContext
from gateway.forms import read_form
from gateway.layout import message_page
from gateway.pdf import PdfBusy

log = logging.getLogger(__name__)

CLAIM_TOKEN = re.compile(r"[A-Za-z0-9_\-=.~]{8,200}")
MAX_FIELD_CHARS = 400
BUYER_KINDS = {"person": invoice_pb2.PARTY_KIND_PERSON, "company": invoice_pb2.PARTY_KIND_COMPANY}

_FIELD_OF_REASON = {
    "INVALID_TAX_ID": "tax_id",
    "NAME_REQUIRED": "name",
    "NAME_TOO_LONG": "name",
    "INVALID_BUYER_KIND": "buyer_kind",
}
_FRIENDLY = {
    "INVALID_TAX_ID": "Invalid tax id",
    "NAME_REQUIRED": "Please enter the buyer name",
    "NAME_TOO_LONG": "The name is too long",
    "INVALID_CHARACTERS": "Contains characters that cannot appear on an invoice",
    "INVALID_BUYER_KIND": "Choose person or company",
}
_TOKEN_PAGES = {
    "UNKNOWN_TOKEN": (
        404,
        "Unknown claim link",
        "This claim link does not exist. Scan the QR code on your receipt again.",
    ),
    "TOKEN_EXPIRED": (410, "Claim link expired", "This claim link has expired; ask the merchant for a new one."),
    "ALREADY_CLAIMED": (
        409,
        "Invoice already claimed",
        "This payment's invoice has already been claimed. If it was you, open the link you received after claiming.",
    ),
}
_LEDGER_STATUS_TEXT = {
    ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED: "Not reimbursed",
    ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED: "Locked by a company for reimbursement",
    ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED: "Reimbursed",
    ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED: "Cancelled",
}


def field_for(error: FapiaoError) -> str | None:
    """The form field a minting rejection is about, or None when it concerns the whole form."""
    if error.reason == "INVALID_CHARACTERS":
        return "tax_id" if "tax id" in error.message else "name"
    return _FIELD_OF_REASON.get(error.reason)


def error_page(error: FapiaoError) -> web.Response:
    """A page for an error that is not about a form field."""
    if error.reason in _TOKEN_PAGES:
        status, title, text = _TOKEN_PAGES[error.reason]
        return message_page(title, text, status=status, reason=error.reason)
    if error.http_status >= 500:
        log.warning("page could not reach a service: %s", error.reason)
        return retry_later(
            message_page("Service busy", "Please try again in a moment.", status=error.http_status, reason=error.reason)
        )
    return message_page("Request refused", error.message, status=error.http_status, reason=error.reason)


def _claim_token(request: web.Request) -> str:
    token = request.match_info["claim_token"]
    if not CLAIM_TOKEN.fullmatch(token):
        raise InvalidArgument("UNKNOWN_TOKEN", "malformed claim token")
    return token


async def _offer(ctx: GatewayContext, token: str) -> minting_pb2.ClaimOffer:
    offer = (await ctx.minting.get_claim_offer(token)).offer
    if offer.claimed:
        raise FailedPrecondition("ALREADY_CLAIMED", "already claimed")
    return offer


async def claim_get(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        token = _claim_token(request)
        offer = await _offer(ctx, token)
    except FapiaoError as error:
        return error_page(error)
    # A fresh key per render: a double submit of this form claims once; a new render is a new attempt.
    return claim_form_page(token, offer, uuid.uuid4().hex)


def _form_values(form: dict[str, str]) -> dict[str, str]:
    return {name: str(form.get(name, ""))[:MAX_FIELD_CHARS] for name in ("buyer_kind", "name", "tax_id")}


async def claim_post(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        token = _claim_token(request)
        form = await read_form(request)
    except FapiaoError as error:
        return error_page(error)
    values = _form_values(form)
    idempotency_key = form.get("idempotency_key", "")[:MAX_FIELD_CHARS]
    errors: dict[str, tuple[str, str]] = {}
    status = 400
    if values["buyer_kind"] not in BUYER_KINDS:
        errors["buyer_kind"] = ("INVALID_BUYER_KIND", _FRIENDLY["INVALID_BUYER_KIND"])
    for input_name, label in (("name", "buyer name"), ("tax_id", "buyer tax id")):
        try:
            check_text(values[input_name], label, max_chars=MAX_FIELD_CHARS)
        except InvalidArgument as error:
            values[input_name] = ""
            errors[input_name] = (error.reason, f"{_FRIENDLY.get(error.reason, 'Not accepted')}: {error.message}")
    if bad_character(idempotency_key) is not None:
        idempotency_key = ""
    if not idempotency_key:
        errors["form"] = ("IDEMPOTENCY_KEY_REQUIRED", "The form was incomplete; please submit it again.")
    if not errors:
        request_msg = minting_pb2.ClaimInvoiceRequest(
            claim_token=token,
            buyer=invoice_pb2.Party(
                kind=BUYER_KINDS[values["buyer_kind"]], name=values["name"], tax_id=values["tax_id"]
            ),
            idempotency_key=idempotency_key,
        )
        try:
            claimed = await ctx.minting.claim_invoice(request_msg)
        except FapiaoError as error:
            field = field_for(error)
            if (field is None and error.reason in _TOKEN_PAGES) or error.http_status >= 500:
                return error_page(error)
            label = _FRIENDLY.get(error.reason, "Not accepted")
            errors[field or "form"] = (error.reason, f"{label}: {error.message}")
            status = error.http_status
        else:
            view_token = ctx.view_tokens.issue(claimed.invoice.body.invoice_id)
            ctx.metrics.claims.labels("claimed").inc()
            raise web.HTTPSeeOther(f"/invoice/{view_token}", headers={"Referrer-Policy": "no-referrer"})
    ctx.metrics.claims.labels("rejected").inc()
    try:
        offer = await _offer(ctx, token)
    except FapiaoError as error:
        return error_page(error)
    return claim_form_page(token, offer, uuid.uuid4().hex, values=values, errors=errors, status=status)


async def _invoice_of(request: web.Request) -> tuple[GatewayContext, invoice_pb2.Invoice, str]:
    ctx = request.app[CONTEXT]
    view_token = request.match_info["view_token"]
    invoice_id = ctx.view_tokens.open(view_token)
    invoice = (await ctx.minting.get_invoice(invoice_id)).invoice
    return ctx, invoice, view_token


async def _ledger_status(ctx: GatewayContext, invoice: invoice_pb2.Invoice) -> str:
    """The verified reimbursement status, or "" when the ledger cannot prove one right now."""
    if invoice.status != invoice_pb2.INVOICE_STATUS_ISSUED or not ctx.settings.validator_keys:
        return ""
    try:
        answer = await asyncio.wait_for(ctx.ledger.get_invoice_state(invoice_id=invoice.body.invoice_id), 1.5)
        if not answer.receipt.header:
            return ""
        result = verify_receipt(answer.receipt, ctx.settings.validator_keys, ctx.settings.quorum)
    except (FapiaoError, TimeoutError, ReceiptInvalid):
        return ""
    if result.invoice_id != invoice.body.invoice_id:
        return ""
    return _LEDGER_STATUS_TEXT.get(result.state.status, "")


async def invoice_get(request: web.Request) -> web.Response:
    try:
        ctx, invoice, view_token = await _invoice_of(request)
    except FapiaoError as error:
        if error.reason == "VIEW_TOKEN_EXPIRED":
            return message_page("Link expired", error.message, status=410, reason=error.reason)
        if error.reason in ("BAD_VIEW_TOKEN", "MALFORMED_VIEW_TOKEN"):
            return message_page("Invalid link", "This invoice link is not valid.", status=404, reason=error.reason)
        return error_page(error)
    return invoice_page(invoice, view_token, await _ledger_status(ctx, invoice))


async def invoice_pdf(request: web.Request) -> web.Response:
    try:
        ctx, invoice, _ = await _invoice_of(request)
    except FapiaoError as error:
        if error.http_status >= 500:
            return error_page(error)
        status = 410 if error.reason == "VIEW_TOKEN_EXPIRED" else 404 if "VIEW_TOKEN" in error.reason else None
        return message_page("Not available", error.message, status=status or error.http_status, reason=error.reason)
    if invoice.status == invoice_pb2.INVOICE_STATUS_PENDING:
        return message_page(
            "Not issued yet",
            "The PDF is available once the ledger has recorded the invoice.",
            status=409,
            reason="INVOICE_PENDING",
        )
    try:
        pdf = await ctx.pdf.render(invoice)
    except PdfBusy as busy:
        log.info("PDF download refused: %s", busy.reason)
        return retry_later(message_page("Busy", busy.message, status=busy.http_status, reason=busy.reason))
    number = invoice.body.invoice_number
    return web.Response(
        body=pdf,
        content_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="fapiao-{number}.pdf"',
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )
