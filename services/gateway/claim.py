"""Claim flow over HTTP: the page behind the QR code, the claim POST, and the claimer's invoice page and PDF;
the same handlers answer the JSON API (gateway.api) and `Accept: application/json`.

Token rules: the claim token (from minting, in the QR) only opens its own offer and can claim it once;
after claiming, the browser is sent to /invoice/<view token>, a separate expiring HMAC token
(gateway.view_tokens). The claim page never shows a claimed invoice, so holding a claim token does not
reveal the buyer who used it.
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from fapiao_runtime.errors import FapiaoError, InvalidArgument
from fapiao_runtime.vocabulary import CLAIM_TOKEN_PATTERN

from gateway import flows, i18n
from gateway.claim_pages import claim_form_page, invoice_page
from gateway.context import CONTEXT
from gateway.forms import read_input
from gateway.pdf import PdfBusy
from gateway.responses import invoice_json, json_answer, offer_json, problem, wants_json

log = logging.getLogger(__name__)

# A view token that does not open is a link that does not exist (404), or one that expired (410).
_VIEW_TOKEN_STATUS = {"VIEW_TOKEN_EXPIRED": 410, "BAD_VIEW_TOKEN": 404, "MALFORMED_VIEW_TOKEN": 404}
_TOKEN_STATUS = {"UNKNOWN_TOKEN": 404, "TOKEN_EXPIRED": 410, "ALREADY_CLAIMED": 409}


def _claim_token(request: web.Request) -> str:
    token = request.match_info["claim_token"]
    if not CLAIM_TOKEN_PATTERN.fullmatch(token):
        raise InvalidArgument("UNKNOWN_TOKEN", "malformed claim token")
    return token


def _refused(request: web.Request, error: FapiaoError) -> web.Response:
    status = _TOKEN_STATUS.get(error.reason) or _VIEW_TOKEN_STATUS.get(error.reason)
    return problem(request, error, status=status)


async def claim_get(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        token = _claim_token(request)
        offer = await flows.claim_offer(ctx, token)
    except FapiaoError as error:
        return _refused(request, error)
    if wants_json(request):
        return json_answer(request, offer_json(offer))
    # A fresh key per render: a double submit of this form claims once; a new render is a new attempt.
    return claim_form_page(i18n.of(request), token, offer, uuid.uuid4().hex)


async def claim_post(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        token = _claim_token(request)
        posted = await read_input(request)
    except FapiaoError as error:
        return _refused(request, error)
    values = flows.values_of(posted, flows.CLAIM_FIELDS, flows.MAX_FIELD_CHARS)
    idempotency_key = flows.values_of(posted, ("idempotency_key",), flows.MAX_FIELD_CHARS)["idempotency_key"]
    try:
        claimed = await flows.claim(ctx, token, values, idempotency_key)
    except flows.FieldErrors as errors:
        if wants_json(request):
            return problem(request, errors)
        try:
            offer = await flows.claim_offer(ctx, token)
        except FapiaoError as error:
            return _refused(request, error)
        lang = i18n.of(request)
        return claim_form_page(
            lang, token, offer, uuid.uuid4().hex, values=values, problems=errors.problems, status=errors.http_status
        )
    except FapiaoError as error:
        return _refused(request, error)
    if wants_json(request):
        body = {
            "view_token": claimed.view_token,
            "status": claimed.status,
            "invoice_url": f"/api/v1/claimed-invoices/{claimed.view_token}",
            "page_url": f"/invoice/{claimed.view_token}",
        }
        return json_answer(request, body, status=201)
    raise web.HTTPSeeOther(f"/invoice/{claimed.view_token}", headers={"Referrer-Policy": "no-referrer"})


async def invoice_get(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    view_token = request.match_info["view_token"]
    try:
        claimed = await flows.claimed_invoice(ctx, view_token)
    except FapiaoError as error:
        return _refused(request, error)
    if wants_json(request):
        return json_answer(request, invoice_json(claimed.invoice, claimed.status, claimed.reimbursement, view_token))
    return invoice_page(i18n.of(request), claimed, view_token)


async def invoice_pdf(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    try:
        number, pdf = await flows.invoice_pdf(ctx, request.match_info["view_token"])
    except PdfBusy as busy:
        log.info("PDF download refused: %s", busy.reason)
        return problem(request, busy)
    except FapiaoError as error:
        return _refused(request, error)
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
