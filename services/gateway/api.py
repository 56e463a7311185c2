"""The JSON API under /api/v1: public verification and the claim flow, served by the same handlers as the
pages (gateway.claim, gateway.verify_page), and the OpenAPI 3 document that describes it (gateway.openapi).

Errors are JSON bodies `{"reason": ..., "message": ...}` with the reason codes gRPC carries; a form's
problems add `"fields"`. Unknown routes under /api answer a JSON 404, a wrong method a JSON 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import claim, verify_page
from gateway.openapi import document
from gateway.responses import JSON_KEY, json_answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/api/v1"


def _as_json(handler: Handler) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        request[JSON_KEY] = True
        return await handler(request)

    answer.__name__ = handler.__name__
    return answer


async def openapi_document(request: web.Request) -> web.Response:
    response = json_answer(request, document())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# (method, path, handler): every operation the OpenAPI document lists, and only those.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", f"{PREFIX}/openapi.json", openapi_document),
    ("GET", f"{PREFIX}/claims/{{claim_token}}", claim.claim_get),
    ("POST", f"{PREFIX}/claims/{{claim_token}}", claim.claim_post),
    ("GET", f"{PREFIX}/claimed-invoices/{{view_token}}", claim.invoice_get),
    ("GET", f"{PREFIX}/claimed-invoices/{{view_token}}/pdf", claim.invoice_pdf),
    ("GET", f"{PREFIX}/invoices/{{invoice_number}}/verification", verify_page.verify_number),
    ("POST", f"{PREFIX}/verifications", verify_page.verify),
)


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, _as_json(handler))
