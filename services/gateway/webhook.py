"""POST /v1/notify/wechatpay/{merchant_id}: forwarded byte-exact to payment_intake.

The signature covers "timestamp\\nnonce\\nbody\\n", so the body must reach intake unchanged: it is read
as bytes and sent as bytes, with the Wechatpay-* headers and the content type. Intake's status and
JSON body come back as they are. WeChat Pay expects an answer within 5 s, so the forward is bounded
by FAPIAO_WEBHOOK_TIMEOUT_MS (4 s): a slow intake gets 504, an unreachable one 503, both with
Retry-After, and the platform retries later.
"""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from fapiao_runtime import tracing
from fapiao_runtime.http_edge import content_encoding, retry_later
from fapiao_runtime.text import bad_character

from gateway.context import CONTEXT

log = logging.getLogger(__name__)

MERCHANT_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
MAX_BODY_BYTES = 64 * 1024
_FORWARDED_HEADERS = ("Content-Type", "User-Agent", "Accept")


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


async def notify(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    merchant_id = request.match_info["merchant_id"]
    if not MERCHANT_ID.fullmatch(merchant_id):
        return _json_error(404, "UNKNOWN_MERCHANT", "no such notification endpoint")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _json_error(413, "BODY_TOO_LARGE", f"notification bodies are at most {MAX_BODY_BYTES} bytes")
    if content_encoding(request) is not None:
        return _json_error(400, "UNSUPPORTED_CONTENT_ENCODING", "notification bodies are not compressed")
    headers = {name: value for name, value in request.headers.items() if name.lower().startswith("wechatpay-")}
    if any(bad_character(value) is not None for value in headers.values()):
        # Raw bytes that are not UTF-8 arrive as lone surrogates: never a header WeChat Pay sends.
        return _json_error(401, "MALFORMED_HEADERS", "a Wechatpay-* header holds bytes that are not text")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _json_error(413, "BODY_TOO_LARGE", f"notification bodies are at most {MAX_BODY_BYTES} bytes")
    except RequestPayloadError:
        return _json_error(400, "MALFORMED_BODY", "the body could not be read")
    for name in _FORWARDED_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    headers[tracing.TRACEPARENT] = tracing.current()  # the request's trace continues in payment_intake
    url = f"{ctx.settings.intake_webhook_url}/v1/notify/wechatpay/{merchant_id}"
    try:
        async with asyncio.timeout(ctx.settings.webhook_timeout_s):
            async with ctx.http.post(url, data=body, headers=headers, allow_redirects=False) as upstream:
                payload = await upstream.read()
                status = upstream.status
                content_type = upstream.headers.get("Content-Type", "application/json")
                retry_after = upstream.headers.get("Retry-After")
    except TimeoutError:
        ctx.metrics.webhook_upstream.labels("timeout").inc()
        # Intake may still record it; the platform's retry is then a duplicate, answered SUCCESS.
        return retry_later(_json_error(504, "UPSTREAM_TIMEOUT", "payment intake did not answer in time"))
    except aiohttp.ClientError as error:
        ctx.metrics.webhook_upstream.labels("unreachable").inc()
        log.warning("payment intake unreachable: %s", type(error).__name__)
        return retry_later(_json_error(503, "UPSTREAM_UNAVAILABLE", "payment intake is not reachable"))
    ctx.metrics.webhook_upstream.labels(str(status)).inc()
    response = web.Response(body=payload, status=status)
    response.headers["Content-Type"] = content_type
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response
