"""Entry point: python -m gateway (HTTP on FAPIAO_HTTP_HOST:FAPIAO_HTTP_PORT, default 127.0.0.1:8080)."""

from __future__ import annotations

from aiohttp import web
from fapiao_runtime.config import env_str
from fapiao_runtime.logs import configure_logging
from fapiao_runtime.metrics import serve_metrics

from gateway.app import build_app
from gateway.settings import GatewaySettings


def main() -> None:
    configure_logging("gateway", env_str("FAPIAO_LOG_LEVEL", "INFO"))
    settings = GatewaySettings.from_env()
    # The gateway's own metrics are on GET /metrics; the shared port carries the process-wide registry.
    serve_metrics(settings.metrics_port)
    # No access log: claim and view URLs carry bearer tokens. The middleware records route templates instead.
    web.run_app(build_app(settings), host=settings.http_host, port=settings.http_port, access_log=None, print=None)


if __name__ == "__main__":
    main()
