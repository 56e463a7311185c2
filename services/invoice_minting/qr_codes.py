"""Claim QR codes: the payload is the claim page URL carrying the token, rendered with segno."""

from __future__ import annotations

import io

import segno


def claim_url(base_url: str, token: str) -> str:
    return f"{base_url}/{token}"


def qr_png(payload: str, scale: int = 6) -> bytes:
    buffer = io.BytesIO()
    segno.make(payload, error="m").save(buffer, kind="png", scale=scale, border=2)
    return buffer.getvalue()


def qr_svg(payload: str, scale: int = 4) -> str:
    buffer = io.BytesIO()
    segno.make(payload, error="m").save(buffer, kind="svg", scale=scale, border=2, xmldecl=False)
    return buffer.getvalue().decode()
