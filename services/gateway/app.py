"""The aiohttp application: routes, metrics middleware and the lifetime of the backend clients."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from fapiao_runtime.errors import FapiaoError, NotFound, Unavailable, unavailable_cause
from fapiao_runtime.http_edge import trace_context
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import api, claim, i18n, verify_page, webhook
from gateway.backends import LedgerClient, MintingClient
from gateway.context import CONTEXT, GatewayContext
from gateway.metrics import GatewayMetrics
from gateway.pdf import PdfRenderer
from gateway.rate_limit import RateLimiter
from gateway.responses import problem
from gateway.settings import GatewaySettings
from gateway.view_tokens import ViewTokens

log = logging.getLogger(__name__)

METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Form posts and notifications are small; refuse big bodies before reading them.
MAX_REQUEST_BYTES = 64 * 1024
MAX_TRACKED_INVOICES = 100_000


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by its route template, never by its path: paths carry tokens."""
    metrics: GatewayMetrics = request.app[METRICS]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as http_error:
        status = http_error.status
        raise
    except FapiaoError as error:
        # A handler left a service's answer unhandled: still the answer, with its reason.
        log.info("%s %s refused: %s", request.method, route, error.reason)
        response = problem(request, error)
        status = response.status
        return response
    except Exception as error:
        cause = unavailable_cause(error)
        if cause is not None:
            # A lost dependency, not a defect: the client is asked to come back.
            log.warning("%s %s: %s unavailable (%s)", request.method, route, cause, type(error).__name__)
            status = 503
            return problem(request, Unavailable(f"{cause.upper()}_UNAVAILABLE", f"the {cause} is unavailable"))
        log.exception("unhandled error on %s %s", request.method, route)
        status = 500
        return problem(request, FapiaoError("INTERNAL", "internal error"), status=500)
    finally:
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def localise(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routes that do not exist (404) or do not take the method (405) answer in the request's language,
    as JSON under /api or when JSON is asked for; a `lang` query parameter is remembered in a cookie."""
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = problem(request, NotFound("NOT_FOUND", "no such route"))
    except web.HTTPMethodNotAllowed as refused:
        response = problem(request, FapiaoError("METHOD_NOT_ALLOWED", "method not allowed"), status=405)
        response.headers["Allow"] = ",".join(sorted(refused.allowed_methods))
    i18n.remember_choice(request, response)
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "SERVING"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics: GatewayMetrics = request.app[METRICS]
    response = web.Response(body=generate_latest(metrics.registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def index(request: web.Request) -> web.Response:
    chosen = request.query.get(i18n.LANG_COOKIE, "")
    raise web.HTTPFound(f"/verify?lang={chosen}" if chosen in i18n.LANGUAGES else "/verify")


def build_app(settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> web.Application:
    """The gateway application; backend clients are opened on startup and closed on cleanup.

    `metrics` defaults to a private registry (tests run several apps in one process); the process
    entry point passes the default registry so FAPIAO_METRICS_PORT shows the same figures.
    """
    app = web.Application(middlewares=[trace_context, observe, localise], client_max_size=MAX_REQUEST_BYTES)
    metrics = metrics or GatewayMetrics()
    app[METRICS] = metrics

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        minting = MintingClient(settings.minting_endpoint, settings.grpc_timeout_s)
        ledger = LedgerClient(settings.ledger_endpoints, settings.grpc_timeout_s)
        pdf = PdfRenderer(
            settings.pdf_font,
            renders=settings.pdf_renders,
            queue=settings.pdf_queue,
            cache_entries=settings.pdf_cache_entries,
        )
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        app[CONTEXT] = GatewayContext(
            settings=settings,
            minting=minting,
            ledger=ledger,
            view_tokens=ViewTokens(settings.secret, settings.view_token_ttl_s),
            verify_limiter=RateLimiter(settings.verify_burst, settings.verify_per_minute, settings.rate_limit_clients),
            invoice_failures=RateLimiter(
                settings.invoice_failure_burst,
                settings.invoice_failures_per_day / 1440,
                MAX_TRACKED_INVOICES,
                keep_spent=True,
            ),
            http=http,
            metrics=metrics,
            pdf=pdf,
        )
        try:
            yield
        finally:
            pdf.close()
            await http.close()
            await minting.close()
            await ledger.close()

    app.cleanup_ctx.append(lifetime)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/", index)
    app.router.add_post("/v1/notify/wechatpay/{merchant_id}", webhook.notify)
    app.router.add_get("/claim/{claim_token}", claim.claim_get)
    app.router.add_post("/claim/{claim_token}", claim.claim_post)
    app.router.add_get("/invoice/{view_token}", claim.invoice_get)
    app.router.add_get("/invoice/{view_token}/pdf", claim.invoice_pdf)
    app.router.add_get("/verify", verify_page.verify)
    app.router.add_post("/verify", verify_page.verify)
    api.add_routes(app)
    return app
