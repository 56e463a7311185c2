"""How an answer is written: JSON for the API (and for `Accept: application/json` on a page route), HTML
otherwise; the JSON shapes of the gateway's results; errors as `{"reason", "message"}` in either form.
"""

from __future__ import annotations

import logging
import math

from aiohttp import web
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2
from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.http_edge import retry_later
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import i18n
from gateway.flows import FieldErrors, RateLimited, VerificationResult
from gateway.i18n import Language
from gateway.layout import message_page
from gateway.messages import OUTCOMES, field_note, reason_text
from gateway.money import yuan_text

log = logging.getLogger(__name__)

JSON_KEY: web.RequestKey[bool] = web.RequestKey("json", bool)
API_PREFIX = "/api/"


def wants_json(request: web.BaseRequest) -> bool:
    """An API route, or a client that asks for JSON and not for HTML."""
    if request.get(JSON_KEY) or request.path.startswith(API_PREFIX):
        return True
    accept = request.headers.get("Accept", "")[:512].lower()
    return "application/json" in accept and "text/html" not in accept


def json_answer(request: web.BaseRequest, body: object, *, status: int = 200) -> web.Response:
    response = web.json_response(body, status=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Language"] = i18n.of(request).html_lang
    return response


def error_body(error: FapiaoError, lang: Language) -> dict[str, object]:
    """`{"reason", "message"}` (the message in `lang`), and for a form every field's note."""
    _, message = reason_text(error.reason, lang, error.http_status)
    body: dict[str, object] = {"reason": error.reason, "message": message}
    if isinstance(error, FieldErrors):
        body["fields"] = {
            name: {"reason": problem.reason, "message": field_note(problem.reason, problem.detail, lang)}
            for name, problem in error.problems.items()
        }
    return body


def problem(request: web.BaseRequest, error: FapiaoError, *, status: int | None = None) -> web.Response:
    """The answer to a refused request (not a form's field errors on a page): JSON or a message page."""
    lang = i18n.of(request)
    status = status or error.http_status
    if wants_json(request):
        response = json_answer(request, error_body(error, lang), status=status)
    else:
        response = message_page(lang, error.reason, status=status)
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if status in (503, 504):
        log.warning("a service could not be reached: %s", error.reason)
        return retry_later(response)
    return response


def _instant(ts: Timestamp) -> str | None:
    if not ts.seconds:
        return None
    return ts.ToJsonString()


def _party(party: invoice_pb2.Party) -> dict[str, str]:
    return {"name": party.name, "tax_id": party.tax_id}


def offer_json(offer: minting_pb2.ClaimOffer) -> dict[str, object]:
    return {
        "merchant_name": offer.merchant_name,
        "amount_fen": offer.amount_fen,
        "amount": yuan_text(offer.amount_fen),
        "paid_at": _instant(offer.paid_at),
        "expires_at": _instant(offer.expires_at),
        "items": [
            {
                "name": item.name,
                "quantity": item.quantity,
                "amount_fen": item.amount_fen,
                "tax_rate_bp": item.tax_rate_bp,
            }
            for item in offer.items
        ],
    }


def invoice_json(invoice: invoice_pb2.Invoice, status: str, reimbursement: str, view_token: str) -> dict[str, object]:
    body = invoice.body
    pending = status == "PENDING"
    return {
        "status": status,
        "reimbursement_status": reimbursement or None,
        "invoice_number": body.invoice_number,
        "issue_date": body.issue_date,
        "seller": _party(body.seller),
        "buyer": _party(body.buyer),
        "lines": [
            {
                "name": line.name,
                "quantity": line.quantity,
                "unit_price_fen": line.unit_price_fen,
                "amount_fen": line.amount_fen,
                "tax_rate_bp": line.tax_rate_bp,
                "tax_fen": line.tax_fen,
                "total_fen": line.total_fen,
            }
            for line in body.lines
        ],
        "total_amount_fen": body.total_amount_fen,
        "total_tax_fen": body.total_tax_fen,
        "total_fen": body.total_fen,
        "total": yuan_text(body.total_fen),
        "verification_qr": None if pending else body.verification_qr,
        "ledger": {"chain_id": invoice.ledger_chain_id, "height": invoice.ledger_height}
        if invoice.ledger_height
        else None,
        "pdf_url": None if pending else f"/api/v1/claimed-invoices/{view_token}/pdf",
        "page_url": f"/invoice/{view_token}",
    }


DETAILED_OUTCOMES = frozenset({"GENUINE", "LOCKED", "REIMBURSED", "CANCELLED"})


def verification_json(result: VerificationResult, lang: Language) -> dict[str, object]:
    """What anyone may learn from a verification: the seller and the status, never the buyer."""
    _, title, text = OUTCOMES[result.outcome]
    body: dict[str, object] = {
        "outcome": result.outcome,
        "reason": result.reason or None,
        "title": lang.gettext(title),
        "message": lang.gettext(text),
        "source": result.source,
        "invoice_number": result.invoice_number,
        "invoice": None,
    }
    verdict = result.verdict
    if verdict is not None and result.outcome in DETAILED_OUTCOMES:
        body["invoice"] = {
            "invoice_number": verdict.invoice_number,
            "issue_date": verdict.issue_date,
            "total_fen": verdict.total_fen,
            "total": yuan_text(verdict.total_fen),
            "reimbursable_fen": verdict.reimbursable_fen,
            "seller": {"name": verdict.seller_name, "tax_id": verdict.seller_tax_id},
            "ledger": {"chain_id": verdict.chain_id, "height": verdict.height},
        }
    return body
