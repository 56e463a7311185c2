"""Entry point: python -m gateway (HTTP on FAPIAO_HTTP_HOST:FAPIAO_HTTP_PORT, default 127.0.0.1:8080)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from fapiao_runtime import collector, event_loop
from fapiao_runtime.config import env_str
from fapiao_runtime.http_edge import SERVER_ARGS
from fapiao_runtime.logs import configure_logging
from fapiao_runtime.metrics import serve_metrics
from prometheus_client import REGISTRY

from gateway.app import build_app
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings


def main() -> None:
    configure_logging("gateway", env_str("FAPIAO_LOG_LEVEL", "INFO"))
    settings = GatewaySettings.from_env()
    # GET /metrics and FAPIAO_METRICS_PORT (scraped by `fapiao status`) serve the same registry.
    metrics = GatewayMetrics(REGISTRY)
    serve_metrics(settings.metrics_port)
    collector.watch_pauses()
    app = build_app(settings, metrics)

    async def collector_settings(_: web.Application) -> AsyncIterator[None]:
        collector.freeze_startup_heap()  # after the backend clients are open (cleanup_ctx runs in order)
        drain = asyncio.ensure_future(collector.drain_every())
        yield
        drain.cancel()

    app.cleanup_ctx.append(collector_settings)
    # No access log: claim and view URLs carry bearer tokens. The middleware records route templates instead.
    web.run_app(
        app,
        host=settings.http_host,
        port=settings.http_port,
        access_log=None,
        print=None,
        loop=event_loop.new_event_loop(),
        **SERVER_ARGS,
    )


if __name__ == "__main__":
    main()
