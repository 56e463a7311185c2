"""Single-purpose, expiring view tokens for the issued-invoice page.

The page URL never carries the invoice id alone: a token is

    base64url("<invoice_id>|<expires_unix>") "." base64url(HMAC-SHA256(k, that payload)[:16])

with k = HMAC-SHA256(FAPIAO_GATEWAY_SECRET, "fapiao/gateway/view-token/v1") so the same secret can key
other purposes without one token type ever standing in for another. A claim token cannot be used here
and a view token cannot claim anything (different routes, different formats, different keys).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from fapiao_runtime.errors import InvalidArgument, PermissionDenied

PURPOSE = b"fapiao/gateway/view-token/v1"
MAC_BYTES = 16
MAX_TOKEN_CHARS = 300
MIN_SECRET_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ViewTokens:
    """Issues and checks view tokens. `secret` must be at least 32 bytes of key material."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the gateway secret must have at least {MIN_SECRET_BYTES} bytes")
        if ttl_s <= 0:
            raise ValueError("view token lifetime must be positive")
        self._key = hmac.new(secret, PURPOSE, hashlib.sha256).digest()
        self.ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"ViewTokens(ttl_s={self.ttl_s})"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:MAC_BYTES]

    def issue(self, invoice_id: str, now_s: float | None = None) -> str:
        """A token for `invoice_id` valid for ttl_s seconds from now."""
        if not invoice_id or "|" in invoice_id:
            raise ValueError("invoice id must be non-empty and free of '|'")
        expires = int(now_s if now_s is not None else time.time()) + self.ttl_s
        payload = f"{invoice_id}|{expires}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def open(self, token: str, now_s: float | None = None) -> str:
        """The invoice id a valid token names.

        Raises InvalidArgument("MALFORMED_VIEW_TOKEN") for garbage, PermissionDenied("BAD_VIEW_TOKEN")
        when the MAC does not verify (forged or altered) and PermissionDenied("VIEW_TOKEN_EXPIRED").
        """
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise InvalidArgument("MALFORMED_VIEW_TOKEN", "not a view token")
        payload_b64, mac_b64 = token.split(".")
        try:
            payload, mac = _unb64(payload_b64), _unb64(mac_b64)
        except (binascii.Error, ValueError):
            raise InvalidArgument("MALFORMED_VIEW_TOKEN", "not a view token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise PermissionDenied("BAD_VIEW_TOKEN", "the link is not valid")
        invoice_id, _, expires_text = payload.decode(errors="replace").rpartition("|")
        if not invoice_id or not expires_text.isdigit():
            raise InvalidArgument("MALFORMED_VIEW_TOKEN", "not a view token")
        if int(expires_text) < (now_s if now_s is not None else time.time()):
            raise PermissionDenied("VIEW_TOKEN_EXPIRED", "the link has expired; claim links open the invoice only once")
        return invoice_id
