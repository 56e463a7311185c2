"""Everything a request handler needs, built once per process (see gateway.app.build_app)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao_runtime.errors import NotFound
from fapiao_runtime.ledger_trust import public_key_from_raw

from gateway.backends import LedgerClient, MintingClient
from gateway.metrics import GatewayMetrics
from gateway.pdf import PdfRenderer
from gateway.rate_limit import RateLimiter
from gateway.settings import GatewaySettings
from gateway.view_tokens import ViewTokens

MAX_CACHED_ISSUER_KEYS = 10_000


@dataclass
class GatewayContext:
    settings: GatewaySettings
    minting: MintingClient
    ledger: LedgerClient
    view_tokens: ViewTokens
    verify_limiter: RateLimiter
    invoice_failures: RateLimiter
    http: aiohttp.ClientSession
    metrics: GatewayMetrics
    pdf: PdfRenderer
    _issuer_keys: OrderedDict[tuple[str, str], Ed25519PublicKey] = field(default_factory=OrderedDict)

    async def issuer_key(self, merchant_id: str, key_id: str) -> Ed25519PublicKey | None:
        """The merchant's issuer public key `key_id` (active or retired), cached; None if unknown.

        Public keys never change under a key id, so a cached key never goes stale; unknown ids are
        not cached, so a key created a moment ago is found on the next request.
        """
        cache_key = (merchant_id, key_id)
        cached = self._issuer_keys.get(cache_key)
        if cached is not None:
            self._issuer_keys.move_to_end(cache_key)
            return cached
        try:
            keys = (await self.minting.list_issuer_keys(merchant_id)).keys
        except NotFound:
            return None
        found = None
        for key in keys:
            if key.merchant_id and key.merchant_id != merchant_id:
                continue
            try:
                public = public_key_from_raw(key.public_key)
            except ValueError:
                continue
            self._issuer_keys[(merchant_id, key.key_id)] = public
            if key.key_id == key_id:
                found = public
        while len(self._issuer_keys) > MAX_CACHED_ISSUER_KEYS:
            self._issuer_keys.popitem(last=False)
        return found


CONTEXT: web.AppKey[GatewayContext] = web.AppKey("ctx", GatewayContext)
