"""Validation of the buyer a consumer types on the claim page."""

from __future__ import annotations

import unicodedata

from fapiao.invoicing.v1 import invoice_pb2
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.tax_id import validate_uscc
from fapiao_runtime.text import bad_character

# The national buyer-name field holds 100 characters (code points, not bytes).
MAX_NAME_CHARS = 100
MAX_IDEMPOTENCY_KEY_CHARS = 128


def check_text(value: str, field: str) -> None:
    """Reject control / format characters, unpaired surrogates and other non-printables
    (fapiao_runtime.text). Raises InvalidArgument("INVALID_CHARACTERS")."""
    if bad_character(value) is not None:
        raise InvalidArgument("INVALID_CHARACTERS", f"{field} contains a control or non-printable character")


def normalise_buyer(buyer: invoice_pb2.Party) -> invoice_pb2.Party:
    """Validated, normalised copy of `buyer` (NFC, trimmed, tax id upper case).

    A person needs a name; a tax id is optional but, if given, must be a valid unified social credit code.
    A company needs a name and a valid code. Raises InvalidArgument with reason INVALID_BUYER_KIND,
    NAME_REQUIRED, NAME_TOO_LONG, INVALID_CHARACTERS or INVALID_TAX_ID.
    """
    if buyer.kind not in (invoice_pb2.PARTY_KIND_PERSON, invoice_pb2.PARTY_KIND_COMPANY):
        raise InvalidArgument("INVALID_BUYER_KIND", "buyer kind must be PERSON or COMPANY")
    check_text(buyer.name, "buyer name")
    name = unicodedata.normalize("NFC", buyer.name).strip()
    if not name:
        raise InvalidArgument("NAME_REQUIRED", "buyer name is required")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument("NAME_TOO_LONG", f"buyer name has more than {MAX_NAME_CHARS} characters")
    check_text(buyer.tax_id, "buyer tax id")
    tax_id = buyer.tax_id.strip()
    if buyer.kind == invoice_pb2.PARTY_KIND_COMPANY and not tax_id:
        raise InvalidArgument("INVALID_TAX_ID", "a company buyer needs its unified social credit code")
    if tax_id:
        tax_id = validate_uscc(tax_id)
    return invoice_pb2.Party(kind=buyer.kind, name=name, tax_id=tax_id)


def check_idempotency_key(key: str) -> str:
    """Raises InvalidArgument IDEMPOTENCY_KEY_REQUIRED / INVALID_IDEMPOTENCY_KEY."""
    if not key:
        raise InvalidArgument("IDEMPOTENCY_KEY_REQUIRED", "idempotency_key is required")
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise InvalidArgument(
            "INVALID_IDEMPOTENCY_KEY", f"idempotency_key must be <= {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII"
        )
    return key
