"""Public verification: GET/POST /verify with number + date + total, or a national QR content string; the
same handlers answer the JSON API (gateway.api) and `Accept: application/json`."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from fapiao_runtime.errors import FapiaoError, InvalidArgument

from gateway import flows, i18n
from gateway.claim_pages import notes
from gateway.context import CONTEXT
from gateway.flows import FieldErrors, FieldProblem, VerificationResult
from gateway.forms import FormRefused, read_input
from gateway.i18n import Language
from gateway.layout import render
from gateway.messages import OUTCOMES
from gateway.responses import DETAILED_OUTCOMES, json_answer, problem, verification_json, wants_json


def _result_view(result: VerificationResult, lang: Language) -> dict[str, object]:
    tone, title, text = OUTCOMES[result.outcome]
    verdict = result.verdict
    return {
        "outcome": result.outcome,
        "reason": result.reason,
        "tone": tone,
        "title": lang.gettext(title),
        "text": lang.gettext(text),
        "verdict": verdict,
        "details": verdict is not None and result.outcome in DETAILED_OUTCOMES,
        "partial": verdict is not None
        and verdict.reimbursable_fen != verdict.total_fen
        and result.outcome != "CANCELLED",
    }


def verify_form(
    lang: Language,
    values: Mapping[str, str],
    problems: dict[str, FieldProblem] | None = None,
    result: VerificationResult | None = None,
    status: int = 200,
) -> web.Response:
    return render(
        lang,
        "verify.html",
        title=lang.gettext("Verify an invoice"),
        status=status,
        values=values,
        errors=notes(problems or {}, lang),
        result=_result_view(result, lang) if result else None,
    )


async def _answer(request: web.Request, values: dict[str, str]) -> web.Response:
    """Verify `values` (the client's check is taken) and answer as the request asks."""
    ctx = request.app[CONTEXT]
    lang = i18n.of(request)
    try:
        result = await flows.verify(ctx, values)
    except FieldErrors as errors:
        if wants_json(request):
            return problem(request, errors)
        return verify_form(lang, values, errors.problems, status=errors.http_status)
    except FapiaoError as error:
        return problem(request, error)
    if wants_json(request):
        return json_answer(request, verification_json(result, lang))
    return verify_form(lang, values, result=result)


def _client(request: web.Request) -> str:
    # The edge itself is the client's peer: a forwarded-for header would let anyone pick their bucket.
    return request.remote or "unknown"


def _nothing_to_verify(request: web.Request, values: Mapping[str, str]) -> web.Response:
    if wants_json(request):
        error = FieldErrors({"form": FieldProblem("VERIFICATION_INPUT_REQUIRED", "send qr, or number, date and total")})
        return problem(request, error)
    return verify_form(i18n.of(request), values)


async def verify(request: web.Request) -> web.Response:
    """GET with a query or POST with a form or JSON: qr, or number + date + total."""
    ctx = request.app[CONTEXT]
    client = _client(request)
    if request.method == "POST":
        # A posted form is a check: the rate limit comes before any work on its body.
        if not request.body_exists:
            return _nothing_to_verify(request, {})
        try:
            flows.take_check(ctx, client)
        except FapiaoError as error:
            return problem(request, error)
        try:
            values = flows.values_of(await read_input(request), flows.VERIFY_FIELDS, flows.MAX_VERIFY_FIELD_CHARS)
        except FormRefused as error:
            if wants_json(request):
                return problem(request, error)
            problems = {"form": FieldProblem(error.reason, error.message)}
            return verify_form(i18n.of(request), {}, problems, status=error.http_status)
        if not flows.verification_requested(values):
            ctx.verify_limiter.give_back(client)
            return _nothing_to_verify(request, values)
    else:
        values = flows.values_of(request.query, flows.VERIFY_FIELDS, flows.MAX_VERIFY_FIELD_CHARS)
        if not flows.verification_requested(values):
            return _nothing_to_verify(request, values)
        try:
            flows.take_check(ctx, client)
        except FapiaoError as error:
            return problem(request, error)
    return await _answer(request, values)


async def verify_number(request: web.Request) -> web.Response:
    """GET /api/v1/invoices/{invoice_number}/verification?date=yyyymmdd&total=112.00"""
    ctx = request.app[CONTEXT]
    values = flows.values_of(request.query, flows.VERIFY_FIELDS, flows.MAX_VERIFY_FIELD_CHARS)
    values["number"] = request.match_info["invoice_number"][: flows.MAX_VERIFY_FIELD_CHARS]
    values["qr"] = ""
    try:
        flows.take_check(ctx, _client(request))
    except FapiaoError as error:
        return problem(request, error)
    if not values["number"]:
        return problem(request, InvalidArgument("INVALID_INVOICE_NUMBER", "the invoice number has 20 digits"))
    return await _answer(request, values)
