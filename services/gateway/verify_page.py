"""Public verification page: GET/POST /verify with number + date + total, or the QR content."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from aiohttp import web
from fapiao_runtime.errors import FapiaoError, InvalidArgument, NotFound
from fapiao_runtime.http_edge import retry_later
from fapiao_runtime.text import check_text

from gateway.context import CONTEXT, GatewayContext
from gateway.forms import FormRefused, read_form
from gateway.layout import esc, message_page, page
from gateway.money import yuan_display
from gateway.qr_content import parse_qr_content, parse_typed_query
from gateway.verification import Outcome, Verdict, freshest, verify_invoice

log = logging.getLogger(__name__)

_FIELD_OF_REASON = {
    "INVALID_INVOICE_NUMBER": "number",
    "INVALID_DATE": "date",
    "INVALID_AMOUNT": "total",
    "MALFORMED_QR": "qr",
    "QR_CHECK_MISMATCH": "qr",
}
_VERDICT_TEXT = {
    Outcome.GENUINE: ("ok", "Genuine 真票", "Issued, recorded on the ledger, not reimbursed."),
    Outcome.LOCKED: ("warn", "Genuine — locked in reimbursement 报销中", "A company has locked it for reimbursement."),
    Outcome.REIMBURSED: (
        "warn",
        "Genuine — already reimbursed 已报销",
        "It has been reimbursed; it cannot be claimed again.",
    ),
    Outcome.CANCELLED: ("bad", "Cancelled 已红冲", "It was cancelled by a red-letter invoice."),
    Outcome.FORGED: ("bad", "NOT genuine 伪造", "The ledger's proof for this invoice does not verify."),
    Outcome.NO_MATCH: ("bad", "Not found 查无此票", "No invoice with this number, date and total is on the ledger."),
    Outcome.PENDING: (
        "info",
        "Being recorded 待上链",
        "The ledger has not finalised this invoice yet; try again shortly.",
    ),
}
_FIELDS = ("qr", "number", "date", "total")
MAX_FIELD_CHARS = 300


def _input(name: str, label: str, value: str, errors: dict[str, tuple[str, str]], hint: str) -> str:
    reason, text = errors.get(name, ("", ""))
    invalid = ' aria-invalid="true"' if name in errors else ""
    return (
        f'<label for="{name}">{esc(label)}</label>'
        f'<input type="text" id="{name}" name="{name}" value="{esc(value)}"{invalid} autocomplete="off">'
        f'<div class="hint">{esc(hint)}</div>'
        f'<div class="error" id="{name}-error" data-reason="{esc(reason)}">{esc(text)}</div>'
    )


def _verdict_card(verdict: Verdict) -> str:
    tone, title, text = _VERDICT_TEXT[verdict.outcome]
    reason = f' <small data-reason="{esc(verdict.reason)}">({esc(verdict.reason)})</small>' if verdict.reason else ""
    details = ""
    if verdict.outcome not in (Outcome.FORGED, Outcome.NO_MATCH, Outcome.PENDING):
        partial = ""
        if verdict.reimbursable_fen != verdict.total_fen and verdict.outcome is not Outcome.CANCELLED:
            partial = f'<dt>Reimbursable</dt><dd id="reimbursable">{esc(yuan_display(verdict.reimbursable_fen))}</dd>'
        details = (
            '<div class="card"><dl>'
            f'<dt>Number</dt><dd id="verified-number">{esc(verdict.invoice_number)}</dd>'
            f"<dt>Issue date</dt><dd>{esc(verdict.issue_date)}</dd>"
            f'<dt>Total</dt><dd id="verified-total">{esc(yuan_display(verdict.total_fen))}</dd>{partial}'
            f'<dt>Seller</dt><dd id="seller-name">{esc(verdict.seller_name)}</dd>'
            f'<dt>Seller tax id</dt><dd id="seller-tax-id">{esc(verdict.seller_tax_id)}</dd>'
            f"<dt>Ledger</dt><dd>chain {verdict.chain_id}, block {verdict.height}, quorum-signed</dd>"
            "</dl></div>"
        )
    return (
        f'<div class="banner {tone}" id="verdict" data-outcome="{verdict.outcome.value}">{esc(title)}{reason}'
        f'<div style="font-weight:400">{esc(text)}</div></div>{details}'
    )


def verify_form(
    values: dict[str, str], errors: dict[str, tuple[str, str]], result: str = "", status: int = 200
) -> web.Response:
    form_error = ""
    if "form" in errors:
        reason, text = errors["form"]
        form_error = f'<div class="banner bad" id="form-error" data-reason="{esc(reason)}">{esc(text)}</div>'
    body = (
        f"{result}{form_error}"
        '<form class="card" id="verify-form" method="post" action="/verify" novalidate>'
        "<h1>Verify an invoice 发票查验</h1>"
        + _input("number", "Invoice number 发票号码", values.get("number", ""), errors, "20 digits")
        + _input("date", "Issue date 开票日期", values.get("date", ""), errors, "yyyymmdd, e.g. 20260215")
        + _input("total", "Total 价税合计 (yuan)", values.get("total", ""), errors, "e.g. 112.00")
        + "<p class=hint>— or paste the content of the invoice's QR code —</p>"
        + _input("qr", "QR content", values.get("qr", ""), errors, "01,32,,<number>,<amount>,<yyyymmdd>,,<check>")
        + '<button type="submit" id="verify-submit">Verify 查验</button></form>'
    )
    return page("Verify an invoice", body, status=status)


def _rate_limited(ctx: GatewayContext, client: str) -> web.Response | None:
    """A 429 page when `client` has no check left, else None (a check is taken)."""
    allowed, retry_after = ctx.verify_limiter.allow(client)
    if allowed:
        return None
    ctx.metrics.rate_limited.inc()
    response = message_page(
        "Too many checks", "Please wait a little before verifying again.", status=429, reason="RATE_LIMITED"
    )
    response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


def _values(source: Mapping[str, object]) -> dict[str, str]:
    return {name: str(source.get(name, ""))[:MAX_FIELD_CHARS] for name in _FIELDS}


async def verify(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    # The edge itself is the client's peer: a forwarded-for header would let anyone pick their bucket.
    client = request.remote or "unknown"
    if request.method == "POST":
        # A posted form is a check: the rate limit comes before any work on its body.
        if not request.body_exists:
            return verify_form({}, {})
        limited = _rate_limited(ctx, client)
        if limited is not None:
            return limited
        try:
            values = _values(await read_form(request))
        except FormRefused as error:
            return verify_form({}, {"form": (error.reason, error.message)}, status=error.http_status)
        if not any(values.values()):
            ctx.verify_limiter.give_back(client)
            return verify_form(values, {})
    else:
        values = _values(request.query)
        if not any(values.values()):
            return verify_form(values, {})
        limited = _rate_limited(ctx, client)
        if limited is not None:
            return limited
    for name, value in values.items():
        try:
            values[name] = check_text(value, name, max_chars=MAX_FIELD_CHARS)
        except InvalidArgument as error:
            values[name] = ""
            return verify_form(values, {name: (error.reason, error.message)}, status=400)
    try:
        if values["qr"].strip():
            query = parse_qr_content(values["qr"])
        else:
            query = parse_typed_query(values["number"], values["date"], values["total"])
    except InvalidArgument as error:
        field = _FIELD_OF_REASON.get(error.reason, "form")
        return verify_form(values, {field: (error.reason, error.message)}, status=400)
    # A check of this number takes a token before asking the ledger, so concurrent guesses cannot all
    # pass; it is given back unless the check failed (wrong date or total).
    if not ctx.invoice_failures.allow(query.invoice_number)[0]:
        ctx.metrics.rate_limited.inc()
        return message_page(
            "Too many failed checks",
            "This invoice number has had too many checks with a wrong date or total; try again later.",
            status=429,
            reason="TOO_MANY_FAILED_CHECKS",
        )
    if not ctx.settings.validator_keys:
        ctx.invoice_failures.give_back(query.invoice_number)
        return message_page(
            "Verification unavailable", "No validator keys are configured.", status=503, reason="NO_VALIDATOR_KEYS"
        )
    try:
        # f + 1 validators: at least one honest answer, and the freshest verified status wins.
        readers = len(ctx.settings.validator_keys) - ctx.settings.quorum + 1
        try:
            answers = await ctx.ledger.get_invoice_states(readers, invoice_number=query.invoice_number)
        except NotFound:
            verdict = Verdict(Outcome.NO_MATCH)
        else:
            verdict = freshest(
                [
                    await verify_invoice(
                        query, answer, ctx.settings.validator_keys, ctx.settings.quorum, ctx.issuer_key
                    )
                    for answer in answers
                ]
            )
    except FapiaoError as error:
        ctx.invoice_failures.give_back(query.invoice_number)
        if error.http_status < 500:
            log.info("verification refused by the ledger: %s", error.reason)
            return message_page("Request refused", error.message, status=error.http_status, reason=error.reason)
        log.warning("verification could not reach a service: %s", error.reason)
        return retry_later(
            message_page("Service busy", "Please try again in a moment.", status=503, reason=error.reason)
        )
    ctx.metrics.verifications.labels(verdict.outcome.value).inc()
    if verdict.outcome is not Outcome.NO_MATCH:
        ctx.invoice_failures.give_back(query.invoice_number)
    return verify_form(values, {}, result=_verdict_card(verdict))
