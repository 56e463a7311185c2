"""What the gateway does, once, for the pages and the JSON API alike: open a claim offer, claim it, show the
claimer's invoice, verify an invoice by its fields or by a national QR code.

Each operation takes plain values and returns a plain result, or raises a FapiaoError whose reason is the
one gRPC carries; `FieldErrors` names every field of a form that is not accepted, all at once. The pages
(gateway.claim, gateway.verify_page) render these results as HTML, the API (gateway.api) as JSON.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.errors import (
    FailedPrecondition,
    FapiaoError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from fapiao_runtime.ledger_trust import ReceiptInvalid, verify_receipt
from fapiao_runtime.tax_id import validate_uscc
from fapiao_runtime.text import bad_character, check_text

from gateway.context import GatewayContext
from gateway.money import parse_yuan
from gateway.qr_content import (
    QrContent,
    VerificationQuery,
    parse_invoice_number,
    parse_issue_date,
    parse_qr_content,
)
from gateway.verification import Outcome, Verdict, freshest, verify_invoice

log = logging.getLogger(__name__)

MAX_FIELD_CHARS = 400
# The national buyer-name field holds 100 characters; minting enforces it, the form says so at once.
MAX_NAME_CHARS = 100
BUYER_KINDS = {"person": invoice_pb2.PARTY_KIND_PERSON, "company": invoice_pb2.PARTY_KIND_COMPANY}
CLAIM_FIELDS = ("buyer_kind", "name", "tax_id")
VERIFY_FIELDS = ("number", "date", "total", "qr")
MAX_VERIFY_FIELD_CHARS = 300
TOKEN_REASONS = frozenset({"UNKNOWN_TOKEN", "TOKEN_EXPIRED", "ALREADY_CLAIMED"})
NOT_ISSUED_HERE = "NOT_ISSUED_HERE"

_FIELD_OF_REASON = {
    "INVALID_TAX_ID": "tax_id",
    "NAME_REQUIRED": "name",
    "NAME_TOO_LONG": "name",
    "INVALID_BUYER_KIND": "buyer_kind",
}
_LEDGER_STATUS = {
    ledger_pb2.INVOICE_LEDGER_STATUS_ISSUED: "NOT_REIMBURSED",
    ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED: "LOCKED",
    ledger_pb2.INVOICE_LEDGER_STATUS_CLOSED: "REIMBURSED",
    ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED: "CANCELLED",
}
INVOICE_STATUS = {
    invoice_pb2.INVOICE_STATUS_PENDING: "PENDING",
    invoice_pb2.INVOICE_STATUS_ISSUED: "ISSUED",
    invoice_pb2.INVOICE_STATUS_REJECTED: "REJECTED",
    invoice_pb2.INVOICE_STATUS_CANCELLED: "CANCELLED",
    invoice_pb2.INVOICE_STATUS_PARTIALLY_RED_LETTERED: "PARTIALLY_RED_LETTERED",
}


@dataclass(frozen=True)
class FieldProblem:
    reason: str
    detail: str


class FieldErrors(InvalidArgument):
    """Fields of a form that are not accepted, every one of them; `field` "form" is the form as a whole.

    The reason is the first problem's (in the form's field order), so a client that reads one reason
    reads the same as gRPC would send; `problems` holds them all.
    """

    def __init__(self, problems: dict[str, FieldProblem], http_status: int = 400) -> None:
        first = next(iter(problems.values()))
        super().__init__(first.reason, first.detail)
        self.problems = problems
        self.http_status = http_status


class RateLimited(ResourceExhausted):
    def __init__(self, reason: str, message: str, retry_after_s: float) -> None:
        super().__init__(reason, message)
        self.retry_after_s = retry_after_s


def values_of(source: Mapping[str, object], names: tuple[str, ...], max_chars: int) -> dict[str, str]:
    """The named text fields of a form or JSON object, bounded; a missing or non-text field is ""."""
    values = {}
    for name in names:
        value = source.get(name, "")
        values[name] = value[:max_chars] if isinstance(value, str) else ""
    return values


# --- the claim flow ---------------------------------------------------------------------------------


async def claim_offer(ctx: GatewayContext, token: str) -> minting_pb2.ClaimOffer:
    """The offer behind a claim token; raises UNKNOWN_TOKEN, TOKEN_EXPIRED or ALREADY_CLAIMED."""
    offer = (await ctx.minting.get_claim_offer(token)).offer
    if offer.claimed:
        raise FailedPrecondition("ALREADY_CLAIMED", "already claimed")
    return offer


def check_buyer(values: dict[str, str]) -> dict[str, FieldProblem]:
    """Every problem of the buyer fields at once (minting checks them again and stays the authority).

    Text that cannot appear on an invoice is cleared from `values`, so it is never shown back.
    """
    problems: dict[str, FieldProblem] = {}
    if values["buyer_kind"] not in BUYER_KINDS:
        problems["buyer_kind"] = FieldProblem("INVALID_BUYER_KIND", "buyer kind must be person or company")
    for name, label in (("name", "buyer name"), ("tax_id", "buyer tax id")):
        try:
            check_text(values[name], label, max_chars=MAX_FIELD_CHARS)
        except InvalidArgument as error:
            values[name] = ""
            problems[name] = FieldProblem(error.reason, error.message)
    if "name" not in problems:
        name = unicodedata.normalize("NFC", values["name"]).strip()
        if not name:
            problems["name"] = FieldProblem("NAME_REQUIRED", "buyer name is required")
        elif len(name) > MAX_NAME_CHARS:
            problems["name"] = FieldProblem("NAME_TOO_LONG", f"buyer name has more than {MAX_NAME_CHARS} characters")
    if "tax_id" not in problems:
        tax_id = values["tax_id"].strip()
        if not tax_id and values["buyer_kind"] == "company":
            problems["tax_id"] = FieldProblem("INVALID_TAX_ID", "a company buyer needs its unified social credit code")
        elif tax_id:
            try:
                validate_uscc(tax_id)
            except InvalidArgument as error:
                problems["tax_id"] = FieldProblem(error.reason, error.message)
    return {name: problems[name] for name in CLAIM_FIELDS if name in problems}


def field_for(error: FapiaoError) -> str | None:
    """The form field a minting rejection is about, or None when it concerns the whole form."""
    if error.reason == "INVALID_CHARACTERS":
        return "tax_id" if "tax id" in error.message else "name"
    return _FIELD_OF_REASON.get(error.reason)


@dataclass(frozen=True)
class Claimed:
    view_token: str
    status: str


async def claim(ctx: GatewayContext, token: str, values: dict[str, str], idempotency_key: str) -> Claimed:
    """Claim the offer for the buyer in `values`; a double submit with the same key claims once.

    Raises FieldErrors (every field not accepted), or the token's FapiaoError.
    """
    problems = check_buyer(values)
    if bad_character(idempotency_key) is not None or len(idempotency_key) > MAX_FIELD_CHARS:
        idempotency_key = ""
    if not idempotency_key:
        problems["form"] = FieldProblem("IDEMPOTENCY_KEY_REQUIRED", "idempotency_key is required")
    if problems:
        ctx.metrics.claims.labels("rejected").inc()
        raise FieldErrors(problems)
    request = minting_pb2.ClaimInvoiceRequest(
        claim_token=token,
        buyer=invoice_pb2.Party(kind=BUYER_KINDS[values["buyer_kind"]], name=values["name"], tax_id=values["tax_id"]),
        idempotency_key=idempotency_key,
    )
    try:
        claimed = await ctx.minting.claim_invoice(request)
    except FapiaoError as error:
        field = field_for(error)
        if (field is None and error.reason in TOKEN_REASONS) or error.http_status >= 500:
            raise
        ctx.metrics.claims.labels("rejected").inc()
        raise FieldErrors({field or "form": FieldProblem(error.reason, error.message)}, error.http_status) from None
    ctx.metrics.claims.labels("claimed").inc()
    invoice = claimed.invoice
    return Claimed(ctx.view_tokens.issue(invoice.body.invoice_id), INVOICE_STATUS.get(invoice.status, "UNKNOWN"))


@dataclass(frozen=True)
class ClaimedInvoice:
    invoice: invoice_pb2.Invoice
    status: str
    # NOT_REIMBURSED, LOCKED, REIMBURSED or CANCELLED as a quorum-signed receipt proves it; "" when unproven.
    reimbursement: str


async def _reimbursement(ctx: GatewayContext, invoice: invoice_pb2.Invoice) -> str:
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
    return _LEDGER_STATUS.get(result.state.status, "")


async def invoice_of(ctx: GatewayContext, view_token: str) -> invoice_pb2.Invoice:
    """The invoice a view token opens; raises MALFORMED_VIEW_TOKEN, BAD_VIEW_TOKEN or VIEW_TOKEN_EXPIRED."""
    invoice_id = ctx.view_tokens.open(view_token)
    return (await ctx.minting.get_invoice(invoice_id)).invoice


async def claimed_invoice(ctx: GatewayContext, view_token: str) -> ClaimedInvoice:
    invoice = await invoice_of(ctx, view_token)
    return ClaimedInvoice(invoice, INVOICE_STATUS.get(invoice.status, "UNKNOWN"), await _reimbursement(ctx, invoice))


async def invoice_pdf(ctx: GatewayContext, view_token: str) -> tuple[str, bytes]:
    """(invoice number, PDF bytes); raises INVOICE_PENDING before the ledger recorded it, PDF_BUSY."""
    invoice = await invoice_of(ctx, view_token)
    if invoice.status == invoice_pb2.INVOICE_STATUS_PENDING:
        raise FailedPrecondition("INVOICE_PENDING", "the PDF is available once the ledger has recorded the invoice")
    return invoice.body.invoice_number, await ctx.pdf.render(invoice)


# --- verification -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationResult:
    """A verification's answer: `outcome` is a verification.Outcome value or NOT_ISSUED_HERE."""

    outcome: str
    invoice_number: str
    verdict: Verdict | None = None
    # "fields" (number, date, total typed) or "qr" (a national QR content string).
    source: str = "fields"

    @property
    def reason(self) -> str:
        return self.verdict.reason if self.verdict else ""


def take_check(ctx: GatewayContext, client: str) -> None:
    """A check of `client`'s budget is taken; raises RateLimited when none is left."""
    allowed, retry_after = ctx.verify_limiter.allow(client)
    if not allowed:
        ctx.metrics.rate_limited.inc()
        raise RateLimited("RATE_LIMITED", "too many checks from this client; wait a little", retry_after)


def _parse_verification(values: dict[str, str]) -> tuple[VerificationQuery, QrContent | None]:
    """What to look up, and the QR it came from (None for typed fields); every problem at once as
    FieldErrors. `values` keeps what was typed, with text that cannot appear on an invoice cleared."""
    problems: dict[str, FieldProblem] = {}
    for name in VERIFY_FIELDS:
        try:
            values[name] = check_text(values[name], name, max_chars=MAX_VERIFY_FIELD_CHARS)
        except InvalidArgument as error:
            values[name] = ""
            problems[name] = FieldProblem(error.reason, error.message)
    if problems:
        raise FieldErrors(problems)
    if values["qr"].strip():
        try:
            qr = parse_qr_content(values["qr"])
        except InvalidArgument as error:
            raise FieldErrors({"qr": FieldProblem(error.reason, error.message)}) from None
        return qr.query, qr
    number = issue_date = ""
    total_fen = 0
    try:
        number = parse_invoice_number(values["number"])
    except InvalidArgument as error:
        problems["number"] = FieldProblem(error.reason, error.message)
    try:
        issue_date = parse_issue_date(values["date"])
    except InvalidArgument as error:
        problems["date"] = FieldProblem(error.reason, error.message)
    try:
        total_fen = parse_yuan(values["total"])
    except InvalidArgument as error:
        problems["total"] = FieldProblem(error.reason, error.message)
    if problems:
        raise FieldErrors(problems)
    return VerificationQuery(number, issue_date, total_fen), None


def verification_requested(values: Mapping[str, str]) -> bool:
    return any(value.strip() for value in values.values())


async def verify(ctx: GatewayContext, values: dict[str, str]) -> VerificationResult:
    """Verify by number + date + total, or by a national QR content string (`values["qr"]`).

    The caller has taken the client's check (take_check). Raises FieldErrors (every field problem at
    once; a Fapiao QR whose check field does not match is QR_CHECK_MISMATCH on "qr"),
    TOO_MANY_FAILED_CHECKS, NO_VALIDATOR_KEYS or a lost ledger's Unavailable.
    """
    query, qr = _parse_verification(values)
    number, source = query.invoice_number, "fields" if qr is None else "qr"
    if qr is not None and not qr.fapiao_shaped:
        # A legacy VAT invoice or another kind: never on this network, nothing to ask the ledger.
        ctx.metrics.verifications.labels(NOT_ISSUED_HERE).inc()
        return VerificationResult(NOT_ISSUED_HERE, number, source=source)
    # A check of this number takes a token before asking the ledger, so concurrent guesses cannot all
    # pass; it is given back unless the check failed (wrong date or total, an altered QR).
    if not ctx.invoice_failures.allow(number)[0]:
        ctx.metrics.rate_limited.inc()
        raise RateLimited(
            "TOO_MANY_FAILED_CHECKS", "this invoice number has had too many failed checks; try again later", 3600
        )
    if not ctx.settings.validator_keys:
        ctx.invoice_failures.give_back(number)
        raise Unavailable("NO_VALIDATOR_KEYS", "no validator keys are configured")
    try:
        # f + 1 validators: at least one honest answer, and the freshest verified status wins.
        readers = len(ctx.settings.validator_keys) - ctx.settings.quorum + 1
        answers = await ctx.ledger.get_invoice_states(readers, invoice_number=number)
    except NotFound:
        ctx.metrics.verifications.labels(NOT_ISSUED_HERE).inc()
        ctx.invoice_failures.give_back(number)
        return VerificationResult(NOT_ISSUED_HERE, number, source=source)
    except FapiaoError as error:
        ctx.invoice_failures.give_back(number)
        if error.http_status < 500:
            log.info("verification refused by the ledger: %s", error.reason)
        else:
            log.warning("verification could not reach a service: %s", error.reason)
        raise
    if qr is not None and not qr.fapiao_check_matches:
        # Fapiao holds this number, and its QR's check field says the content was changed.
        ctx.metrics.verifications.labels("QR_CHECK_MISMATCH").inc()
        raise FieldErrors(
            {"qr": FieldProblem("QR_CHECK_MISMATCH", "the QR check field does not match: mistyped or altered")}
        )
    try:
        verdicts = [
            await verify_invoice(query, answer, ctx.settings.validator_keys, ctx.settings.quorum, ctx.issuer_key)
            for answer in answers
        ]
    except FapiaoError:
        ctx.invoice_failures.give_back(number)
        raise
    verdict = freshest(verdicts)
    ctx.metrics.verifications.labels(verdict.outcome.value).inc()
    if verdict.outcome is not Outcome.NO_MATCH:
        ctx.invoice_failures.give_back(number)
    return VerificationResult(verdict.outcome.value, number, verdict, source)
