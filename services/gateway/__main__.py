"""Entry point: python -m gateway (skeleton: /healthz only until the gateway lands)."""

from __future__ import annotations

from aiohttp import web

from fapiao_runtime.config import env_int, env_str
from fapiao_runtime.logs import configure_logging


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "SERVING"})


def main() -> None:
    configure_logging("gateway")
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=env_str("FAPIAO_HTTP_HOST", "127.0.0.1"), port=env_int("FAPIAO_HTTP_PORT", 8080), print=None)


if __name__ == "__main__":
    main()
