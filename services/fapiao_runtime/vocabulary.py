"""The invoice vocabulary every service speaks: the invoice number, the issue date, the verification
QR check field and the claim-token hash. One definition each, so a rule cannot drift between the
service that writes a value and the one that checks it.

Money in figures and in capitals (`yuan_text`, 大写) is `fapiao_runtime.money_text`; the parser of
national QR content strings is the verification page's (`gateway.qr_content`), which checks Fapiao's
own check field with `qr_check` here.
"""

from __future__ import annotations

import hashlib
import re

from fapiao_runtime.errors import InvalidArgument

# The national 20-digit invoice number (数电票号码): ASCII digits only (never `\d`, which takes any
# script's digits); match with fullmatch.
INVOICE_NUMBER = re.compile(r"[0-9]{20}")
# An issue date as the invoice and the ledger carry it: yyyymmdd (calendar validity is the caller's).
ISSUE_DATE = re.compile(r"[0-9]{8}")
# The trailing check field of a verification QR content string: 4 hex digits.
QR_CHECK = re.compile(r"[0-9A-Fa-f]{4}")


def is_invoice_number(text: str) -> bool:
    """True for exactly twenty ASCII digits (no sign, spaces, other digits or trailing newline)."""
    return INVOICE_NUMBER.fullmatch(text) is not None


def require_invoice_number(text: str) -> str:
    """`text` when it is an invoice number; InvalidArgument("INVALID_INVOICE_NUMBER") otherwise."""
    if not is_invoice_number(text):
        raise InvalidArgument("INVALID_INVOICE_NUMBER", "an invoice number has 20 digits")
    return text


def qr_check(head: str) -> str:
    """The 4-hex check field of a verification QR content string, over everything before it
    (`head` ends with the comma before the check field).

    The national algorithm of this field is not public; Fapiao's is the first two bytes of SHA-256
    over the head, upper-case hex, so a reader detects a mistyped or altered content string.
    """
    return hashlib.sha256(head.encode()).hexdigest()[:4].upper()


def with_qr_check(head: str) -> str:
    """`head` (ending with a comma) completed with its check field."""
    return head + qr_check(head)


def qr_check_matches(content: str) -> bool:
    """True when the last comma-separated field of `content` is the check of everything before it
    (hex case-insensitive)."""
    head, comma, check = content.rpartition(",")
    return bool(comma) and QR_CHECK.fullmatch(check) is not None and qr_check(head + comma) == check.upper()


# What a claim token can look like: base64url text (invoice_minting issues 43 characters, 32 random
# bytes). Anything else is no token Fapiao issued; the gateway and invoice_minting both refuse it unread.
CLAIM_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,128}")


def claim_token_hash(claim_token: str) -> bytes:
    """What is stored and looked up for a claim token: SHA-256 of its text. The token itself is a
    bearer secret and is never stored in the clear next to the offer it opens."""
    return hashlib.sha256(claim_token.encode()).digest()
