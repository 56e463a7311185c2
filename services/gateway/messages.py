"""What each reason, verdict and status says to a person, in catalogue msgids (English, marked with N_).

Reasons are the stable UPPER_SNAKE codes of fapiao_runtime.errors (the same in gRPC, the JSON API and
the pages' data-reason attributes); the text is translated where it is shown (gateway.i18n).
"""

from __future__ import annotations

from gateway.i18n import N_, Language

# reason -> (title, explanation)
REASONS: dict[str, tuple[str, str]] = {
    "UNKNOWN_TOKEN": (
        N_("Unknown claim link"),
        N_("This claim link does not exist. Scan the QR code on your receipt again."),
    ),
    "TOKEN_EXPIRED": (N_("Claim link expired"), N_("This claim link has expired; ask the merchant for a new one.")),
    "ALREADY_CLAIMED": (
        N_("Invoice already claimed"),
        N_(
            "This payment's invoice has already been claimed. If it was you, open the link you received after claiming."
        ),
    ),
    "VIEW_TOKEN_EXPIRED": (
        N_("Link expired"),
        N_("This invoice link has expired; claim links open the invoice only once."),
    ),
    "BAD_VIEW_TOKEN": (N_("Invalid link"), N_("This invoice link is not valid.")),
    "MALFORMED_VIEW_TOKEN": (N_("Invalid link"), N_("This invoice link is not valid.")),
    "UNKNOWN_INVOICE": (N_("Invoice not found"), N_("There is no such invoice.")),
    "INVOICE_PENDING": (
        N_("Not issued yet"),
        N_("The PDF is available once the ledger has recorded the invoice."),
    ),
    "PDF_BUSY": (N_("Busy"), N_("Too many PDFs are being rendered; try again in a moment.")),
    "RATE_LIMITED": (N_("Too many checks"), N_("Please wait a little before verifying again.")),
    "TOO_MANY_FAILED_CHECKS": (
        N_("Too many failed checks"),
        N_("This invoice number has had too many checks with a wrong date or total; try again later."),
    ),
    "NO_VALIDATOR_KEYS": (N_("Verification unavailable"), N_("No validator keys are configured.")),
    "UNSUPPORTED_CONTENT_ENCODING": (N_("Request refused"), N_("Form posts are not compressed.")),
    "UNSUPPORTED_CHARSET": (N_("Request refused"), N_("Forms are posted in UTF-8.")),
    "UNSUPPORTED_MEDIA_TYPE": (N_("Request refused"), N_("This is not a form post.")),
    "BODY_TOO_LARGE": (N_("Request refused"), N_("The request body is too large.")),
    "MALFORMED_FORM": (N_("Request refused"), N_("The form body cannot be read.")),
    "MALFORMED_JSON": (N_("Request refused"), N_("The request body is not a JSON object.")),
    "NOT_FOUND": (N_("Page not found"), N_("There is nothing at this address.")),
    "METHOD_NOT_ALLOWED": (N_("Method not allowed"), N_("This address does not answer this method.")),
    "INTERNAL": (N_("Something went wrong"), N_("Please try again.")),
    "INVALID_FIELDS": (N_("Please check the form"), N_("Some fields were not accepted; see the notes next to them.")),
    # Field reasons: the title is the note shown next to the field.
    "INVALID_TAX_ID": (N_("Invalid tax id"), N_("Enter the 18-character unified social credit code.")),
    "NAME_REQUIRED": (N_("Please enter the buyer name"), N_("The buyer name is required.")),
    "NAME_TOO_LONG": (N_("The name is too long"), N_("A buyer name has at most 100 characters.")),
    "INVALID_CHARACTERS": (
        N_("Contains characters that cannot appear on an invoice"),
        N_("Remove control or invisible characters."),
    ),
    "FIELD_TOO_LONG": (N_("Too long"), N_("This field is too long.")),
    "INVALID_BUYER_KIND": (N_("Choose person or company"), N_("The buyer is a person or a company.")),
    "IDEMPOTENCY_KEY_REQUIRED": (
        N_("The form was incomplete"),
        N_("The form was incomplete; please submit it again."),
    ),
    "INVALID_IDEMPOTENCY_KEY": (
        N_("The form was incomplete"),
        N_("The form was incomplete; please submit it again."),
    ),
    "INVALID_INVOICE_NUMBER": (N_("Invalid invoice number"), N_("The invoice number has 20 digits.")),
    "INVALID_DATE": (N_("Invalid date"), N_("The issue date is yyyymmdd, e.g. 20261208.")),
    "INVALID_AMOUNT": (N_("Invalid amount"), N_("The amount is yuan with at most two decimals, e.g. 112.00.")),
    "MALFORMED_QR": (
        N_("Not an invoice QR code"),
        N_("The content does not look like an invoice QR code: 01,<kind>,<code>,<number>,<amount>,<date>,…"),
    ),
    "QR_CHECK_MISMATCH": (
        N_("The QR code was altered"),
        N_("The QR check field does not match this invoice: the content was mistyped or altered."),
    ),
    "VERIFICATION_INPUT_REQUIRED": (
        N_("Nothing to verify"),
        N_("Enter the invoice number, issue date and total, or the QR content."),
    ),
}
UNAVAILABLE = (N_("Service busy"), N_("Please try again in a moment."))
REFUSED = (N_("Request refused"), N_("The request was not accepted."))

# Details services send in English that the catalogue translates (validate_uscc's defects).
DETAILS = (
    N_("tax id must have 18 characters"),
    N_("unknown registration authority code (character 1)"),
    N_("unknown organisation type code (character 2)"),
    N_("region code (characters 3-8) must be digits"),
    N_("check character does not match (GB 32100-2015)"),
    N_("a company buyer needs its unified social credit code"),
    N_("the issue date is not a calendar date"),
    N_("amount is out of range"),
)

# Verification outcomes: (tone, title, explanation).
OUTCOMES: dict[str, tuple[str, str, str]] = {
    "GENUINE": ("ok", N_("Genuine"), N_("Issued, recorded on the ledger, not reimbursed.")),
    "LOCKED": ("warn", N_("Genuine — locked in reimbursement"), N_("A company has locked it for reimbursement.")),
    "REIMBURSED": (
        "warn",
        N_("Genuine — already reimbursed"),
        N_("It has been reimbursed; it cannot be claimed again."),
    ),
    "CANCELLED": ("bad", N_("Cancelled"), N_("It was cancelled by a red-letter invoice.")),
    "FORGED": ("bad", N_("NOT genuine"), N_("The ledger's proof for this invoice does not verify.")),
    "NO_MATCH": (
        "bad",
        N_("Not found"),
        N_("No invoice with this number, date and total is on the ledger."),
    ),
    "PENDING": (
        "info",
        N_("Being recorded"),
        N_("The ledger has not finalised this invoice yet; try again shortly."),
    ),
    "NOT_ISSUED_HERE": (
        "info",
        N_("Not issued on this network"),
        N_(
            "Fapiao did not issue an invoice with this number. An invoice of another platform is verified "
            "on the national tax service's verification platform."
        ),
    ),
}

# Invoice statuses on the claimer's page: (tone, banner).
INVOICE_STATUSES: dict[str, tuple[str, str]] = {
    "PENDING": ("info", N_("Recording on the ledger… this page refreshes by itself.")),
    "ISSUED": ("ok", N_("Issued and recorded on the ledger.")),
    "REJECTED": ("bad", N_("The ledger rejected this invoice.")),
    "CANCELLED": ("warn", N_("Cancelled by a red-letter invoice.")),
    "PARTIALLY_RED_LETTERED": ("warn", N_("Partly reversed by a red-letter invoice.")),
    "UNKNOWN": ("info", N_("Status unknown.")),
}
STATUS_NAMES = {
    "PENDING": N_("Pending"),
    "ISSUED": N_("Issued"),
    "REJECTED": N_("Rejected"),
    "CANCELLED": N_("Cancelled"),
    "PARTIALLY_RED_LETTERED": N_("Partly red-lettered"),
    "UNKNOWN": N_("Unknown"),
}

# Reimbursement statuses the ledger proves.
LEDGER_STATUSES = {
    "NOT_REIMBURSED": N_("Not reimbursed"),
    "LOCKED": N_("Locked by a company for reimbursement"),
    "REIMBURSED": N_("Reimbursed"),
    "CANCELLED": N_("Cancelled"),
}

# What the claim page's script says before a round trip.
SCRIPT_MESSAGES = {
    "length": N_("must have 18 characters"),
    "authority": N_("unknown registration authority code (character 1)"),
    "type": N_("unknown organisation type code (character 2)"),
    "region": N_("region code (characters 3-8) must be digits"),
    "char": N_("a character that is not allowed"),
    "check": N_("check character does not match (GB 32100-2015)"),
    "company": N_("a company needs its unified social credit code"),
    "invalid_tax_id": N_("Invalid tax id"),
    "name_required": N_("Please enter the buyer name"),
    "name_too_long": N_("The name is too long"),
    "submitting": N_("Submitting…"),
}


def reason_text(reason: str, lang: Language, http_status: int = 400) -> tuple[str, str]:
    """(title, explanation) of `reason` in `lang`."""
    title, text = REASONS.get(reason) or (UNAVAILABLE if http_status >= 500 else REFUSED)
    return lang.gettext(title), lang.gettext(text)


def field_note(reason: str, detail: str, lang: Language) -> str:
    """The note next to a field: the reason's title, and the service's detail when the language has it."""
    title = lang.gettext(REASONS.get(reason, REFUSED)[0])
    if detail and lang.known(detail):
        return f"{title}: {lang.gettext(detail)}" if lang.code == "en" else f"{title}：{lang.gettext(detail)}"
    return title
