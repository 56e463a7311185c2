"""The OpenAPI 3.1 document of the gateway's JSON API, served at /api/v1/openapi.json.

Every operation here is a route of gateway.api.ROUTES (a test calls each one and checks its answers
against these schemas).
"""

from __future__ import annotations

import copy
from typing import Any

_REF = "#/components/schemas/"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Any], *, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


_STRING = {"type": "string"}
_INT = {"type": "integer"}
_FEN = {"type": "integer", "description": "an amount in fen (分, 1/100 yuan)"}
_YUAN = {"type": "string", "pattern": "^-?[0-9]+\\.[0-9]{2}$", "description": "yuan, two decimals"}
_DATE = {"type": "string", "pattern": "^[0-9]{8}$", "description": "yyyymmdd"}
_PARTY = _obj({"name": _STRING, "tax_id": _STRING})
_LEDGER = _obj({"chain_id": _INT, "height": _INT})

SCHEMAS: dict[str, Any] = {
    "Error": {
        **_obj(
            {
                "reason": {
                    "type": "string",
                    "pattern": "^[A-Z][A-Z0-9_]*$",
                    "description": "the stable reason code, the same as gRPC's fapiao-reason",
                },
                "message": {"type": "string", "description": "what it means, in the answer's language"},
                "fields": {
                    "type": "object",
                    "description": 'every field of the request that is not accepted ("form": the request as a whole)',
                    "additionalProperties": _obj({"reason": _STRING, "message": _STRING}),
                },
            },
            required=["reason", "message"],
        )
    },
    "ClaimOffer": _obj(
        {
            "merchant_name": _STRING,
            "amount_fen": _FEN,
            "amount": _YUAN,
            "paid_at": _nullable({"type": "string", "format": "date-time"}),
            "expires_at": _nullable({"type": "string", "format": "date-time"}),
            "items": {
                "type": "array",
                "items": _obj({"name": _STRING, "quantity": _INT, "amount_fen": _FEN, "tax_rate_bp": _INT}),
            },
        }
    ),
    "ClaimRequest": _obj(
        {
            "buyer_kind": {"type": "string", "enum": ["person", "company"]},
            "name": {"type": "string", "maxLength": 100, "description": "the buyer's name (invoice title)"},
            "tax_id": {
                "type": "string",
                "description": "18-character unified social credit code; required for a company",
            },
            "idempotency_key": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "the same key claims once however often it is sent",
            },
        },
        required=["buyer_kind", "name", "idempotency_key"],
    ),
    "Claimed": _obj(
        {
            "view_token": {"type": "string", "description": "opens the claimed invoice; expires"},
            "status": {"type": "string", "enum": ["PENDING", "ISSUED", "REJECTED", "CANCELLED", "UNKNOWN"]},
            "invoice_url": _STRING,
            "page_url": _STRING,
        }
    ),
    "ClaimedInvoice": _obj(
        {
            "status": {
                "type": "string",
                "enum": ["PENDING", "ISSUED", "REJECTED", "CANCELLED", "PARTIALLY_RED_LETTERED", "UNKNOWN"],
            },
            "reimbursement_status": _nullable(
                {"type": "string", "enum": ["NOT_REIMBURSED", "LOCKED", "REIMBURSED", "CANCELLED"]}
            ),
            "invoice_number": _STRING,
            "issue_date": _DATE,
            "seller": _PARTY,
            "buyer": _PARTY,
            "lines": {
                "type": "array",
                "items": _obj(
                    {
                        "name": _STRING,
                        "quantity": _INT,
                        "unit_price_fen": _FEN,
                        "amount_fen": _FEN,
                        "tax_rate_bp": _INT,
                        "tax_fen": _FEN,
                        "total_fen": _FEN,
                    }
                ),
            },
            "total_amount_fen": _FEN,
            "total_tax_fen": _FEN,
            "total_fen": _FEN,
            "total": _YUAN,
            "verification_qr": _nullable(_STRING),
            "ledger": _nullable(_LEDGER),
            "pdf_url": _nullable(_STRING),
            "page_url": _STRING,
        }
    ),
    "VerificationRequest": {
        "type": "object",
        "description": "a national QR content string (数电 or legacy VAT), or number + date + total",
        "properties": {
            "qr": {"type": "string", "example": "01,32,,23442000000014209621,112.00,20230215,,74AE"},
            "number": {"type": "string", "pattern": "^[0-9]{20}$"},
            "date": _DATE,
            "total": {"type": "string", "example": "112.00"},
        },
    },
    "Verification": _obj(
        {
            "outcome": {
                "type": "string",
                "enum": [
                    "GENUINE",
                    "LOCKED",
                    "REIMBURSED",
                    "CANCELLED",
                    "FORGED",
                    "NO_MATCH",
                    "PENDING",
                    "NOT_ISSUED_HERE",
                ],
            },
            "reason": _nullable(_STRING),
            "title": _STRING,
            "message": _STRING,
            "source": {"type": "string", "enum": ["fields", "qr"]},
            "invoice_number": _STRING,
            "invoice": _nullable(
                _obj(
                    {
                        "invoice_number": _STRING,
                        "issue_date": _DATE,
                        "total_fen": _FEN,
                        "total": _YUAN,
                        "reimbursable_fen": _FEN,
                        "seller": _PARTY,
                        "ledger": _LEDGER,
                    }
                )
            ),
        }
    ),
}

_ERRORS = {
    "400": "a field or the body is not accepted (fields lists every one)",
    "404": "no such token, invoice or route",
    "409": "already claimed, or not issued yet",
    "410": "the link has expired",
    "413": "the body is too large",
    "415": "the body is not JSON or a form in UTF-8, or is compressed",
    "429": "too many checks; see Retry-After",
    "503": "a service is unreachable; see Retry-After",
}


def _error_responses(*codes: str) -> dict[str, Any]:
    return {code: {"description": _ERRORS[code], "content": {JSON: {"schema": _ref("Error")}}} for code in codes}


def _ok(schema: str, description: str, code: str = "200") -> dict[str, Any]:
    return {code: {"description": description, "content": {JSON: {"schema": _ref(schema)}}}}


_LANG = {
    "name": "Accept-Language",
    "in": "header",
    "required": False,
    "description": "zh (default) or en: the language of messages",
    "schema": {"type": "string"},
}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _STRING}


PATHS: dict[str, Any] = {
    "/api/v1/openapi.json": {
        "get": {
            "operationId": "getOpenApiDocument",
            "summary": "This document",
            "responses": {"200": {"description": "the OpenAPI document", "content": {JSON: {"schema": {}}}}},
        }
    },
    "/api/v1/claims/{claim_token}": {
        "parameters": [_path_param("claim_token", "the token in the claim QR code of a payment"), _LANG],
        "get": {
            "operationId": "getClaimOffer",
            "summary": "The payment a claim token offers an invoice for",
            "responses": {
                **_ok("ClaimOffer", "the offer"),
                **_error_responses("404", "409", "410", "503"),
            },
        },
        "post": {
            "operationId": "claimInvoice",
            "summary": "Claim the invoice for a buyer (every field problem is answered at once)",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ClaimRequest")}}},
            "responses": {
                **_ok("Claimed", "claimed; the invoice is being recorded on the ledger", "201"),
                **_error_responses("400", "404", "409", "410", "413", "415", "503"),
            },
        },
    },
    "/api/v1/claimed-invoices/{view_token}": {
        "parameters": [_path_param("view_token", "the token a claim answered"), _LANG],
        "get": {
            "operationId": "getClaimedInvoice",
            "summary": "The claimer's own invoice, with its verified reimbursement status",
            "responses": {**_ok("ClaimedInvoice", "the invoice"), **_error_responses("404", "410", "503")},
        },
    },
    "/api/v1/claimed-invoices/{view_token}/pdf": {
        "parameters": [_path_param("view_token", "the token a claim answered"), _LANG],
        "get": {
            "operationId": "getClaimedInvoicePdf",
            "summary": "The invoice as PDF",
            "responses": {
                "200": {
                    "description": "the PDF",
                    "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_error_responses("404", "409", "410", "503"),
            },
        },
    },
    "/api/v1/invoices/{invoice_number}/verification": {
        "parameters": [
            _path_param("invoice_number", "the 20-digit invoice number"),
            {"name": "date", "in": "query", "required": True, "description": "issue date", "schema": _DATE},
            {
                "name": "total",
                "in": "query",
                "required": True,
                "description": "价税合计 in yuan",
                "schema": {"type": "string", "example": "112.00"},
            },
            _LANG,
        ],
        "get": {
            "operationId": "verifyInvoiceByNumber",
            "summary": "Verify an invoice by number, issue date and total (价税合计)",
            "responses": {**_ok("Verification", "the verdict"), **_error_responses("400", "429", "503")},
        },
    },
    "/api/v1/verifications": {
        "parameters": [_LANG],
        "post": {
            "operationId": "verifyInvoice",
            "summary": "Verify an invoice by a national QR content string, or by number, date and total",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("VerificationRequest")}}},
            "responses": {
                **_ok("Verification", "the verdict"),
                **_error_responses("400", "413", "415", "429", "503"),
            },
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Fapiao gateway",
        "version": "1.0.0",
        "description": (
            "Public verification of invoices and the consumer's claim flow. Messages are in Simplified "
            "Chinese, or English by Accept-Language; reasons are the stable codes of the gRPC services."
        ),
    },
    "paths": PATHS,
    "components": {"schemas": SCHEMAS},
}


def document() -> dict[str, Any]:
    """A copy of the OpenAPI document."""
    return copy.deepcopy(DOCUMENT)
