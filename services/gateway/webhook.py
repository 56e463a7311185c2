"""POST /v1/notify/wechatpay/{merchant_id}: forwarded byte-exact to payment_intake.

The signature covers "timestamp\\nnonce\\nbody\\n", so the body must reach intake unchanged: it is read
as bytes and sent as bytes, with the Wechatpay-* headers and the content type. Intake's status and
JSON body come back as they are. WeChat Pay expects an answer within 5 s, so the forward is bounded
by FAPIAO_WEBHOOK_TIMEOUT_MS (4 s): a slow intake gets 504 and the platform retries later.
"""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
from aiohttp import web

from gateway.context import CONTEXT

log = logging.getLogger(__name__)

MERCHANT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_BODY_BYTES = 64 * 1024
_FORWARDED_HEADERS = ("Content-Type", "User-Agent", "Accept")


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


async def notify(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    merchant_id = request.match_info["merchant_id"]
    if not MERCHANT_ID.match(merchant_id):
        return _json_error(404, "UNKNOWN_MERCHANT", "no such notification endpoint")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _json_error(413, "BODY_TOO_LARGE", f"notification bodies are at most {MAX_BODY_BYTES} bytes")
    body = await request.read()
    headers = {name: value for name, value in request.headers.items() if name.lower().startswith("wechatpay-")}
    for name in _FORWARDED_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    url = f"{ctx.settings.intake_webhook_url}/v1/notify/wechatpay/{merchant_id}"
    try:
        async with asyncio.timeout(ctx.settings.webhook_timeout_s):
            async with ctx.http.post(url, data=body, headers=headers, allow_redirects=False) as upstream:
                payload = await upstream.read()
                status = upstream.status
                content_type = upstream.headers.get("Content-Type", "application/json")
    except TimeoutError:
        ctx.metrics.webhook_upstream.labels("timeout").inc()
        return _json_error(504, "UPSTREAM_TIMEOUT", "payment intake did not answer in time")
    except aiohttp.ClientError as error:
        ctx.metrics.webhook_upstream.labels("unreachable").inc()
        log.warning("payment intake unreachable: %s", type(error).__name__)
        return _json_error(502, "UPSTREAM_UNAVAILABLE", "payment intake is not reachable")
    ctx.metrics.webhook_upstream.labels(str(status)).inc()
    response = web.Response(body=payload, status=status)
    response.headers["Content-Type"] = content_type
    return response
