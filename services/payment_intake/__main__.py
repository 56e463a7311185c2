"""Entry point: python -m payment_intake (gRPC PaymentIntakeService, WeChat Pay style webhook, and
MerchantAdminService on the mutual-TLS admin port when FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE is set)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable
from pathlib import Path

from fapiao.admin.v1 import merchant_admin_service_pb2_grpc as admin_grpc
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as service_grpc
from fapiao_runtime import event_loop, workers
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.errors import unavailable_cause
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig
from fapiao_runtime.logs import configure_logging
from fapiao_runtime.service import ServiceContext, Task, run_service

from payment_intake import store
from payment_intake.admin_api import SERVICE_NAME as ADMIN_SERVICE_NAME
from payment_intake.admin_api import MerchantAdminServicer
from payment_intake.batcher import PaymentBatcher
from payment_intake.grpc_api import SERVICE_NAME, PaymentIntakeServicer
from payment_intake.handlers import IntakeHandlers
from payment_intake.merchants import MerchantDirectory
from payment_intake.settings import DB_SCHEMA, DEFAULT_GRPC_PORT, IntakeSettings
from payment_intake.webhook import NotificationReceiver, start_webhook

log = logging.getLogger("payment_intake")


async def _purge_nonces(ctx: ServiceContext, retention_s: int) -> None:
    """Forget webhook nonces older than the replay window, once a minute."""
    while not ctx.stop.is_set():
        try:
            async with ctx.pool.acquire() as conn:
                await store.purge_nonces(conn, retention_s)
        except Exception as exc:
            if unavailable_cause(exc) is None:
                log.exception("nonce purge failed; will retry")
            else:
                log.warning("nonce purge skipped: a dependency is unavailable", extra={"error": repr(exc)[:300]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), timeout=60)


async def _serve_webhook_until_stop(ctx: ServiceContext, runner: object) -> None:
    await ctx.stop.wait()
    await runner.cleanup()  # type: ignore[attr-defined]


async def _start_admin(ctx: ServiceContext, settings: IntakeSettings) -> GrpcServer | None:
    """MerchantAdminService on the admin port with mutual TLS (operator certificates only), if configured."""
    if settings.admin_tls is None:
        return None
    admin = GrpcServer([ADMIN_SERVICE_NAME], reuse_port=ctx.config.reuse_port)
    admin.add_servicer(
        admin_grpc.add_MerchantAdminServiceServicer_to_server, MerchantAdminServicer(ctx.pool, settings.secrets_box())
    )
    port = await admin.start(ctx.config.grpc_host, settings.admin_port, settings.admin_tls)
    log.info("merchant admin API serving with mutual TLS", extra={"admin_port": port})
    return admin


async def _stop_admin_at_stop(ctx: ServiceContext, admin: GrpcServer) -> None:
    await ctx.stop.wait()
    await admin.stop(5.0)


def wiring(settings: IntakeSettings):  # type: ignore[no-untyped-def]
    async def wire(ctx: ServiceContext, server: GrpcServer) -> list[Awaitable[None] | Task]:
        directory = MerchantDirectory(ctx.pool, settings.secrets_box(), ttl_s=settings.merchant_cache_ttl_s)
        batcher = PaymentBatcher(
            ctx.pool,
            max_batch=settings.batch_max,
            workers=settings.batch_workers,
            max_pending=settings.max_pending,
            linger_ms=settings.batch_linger_ms,
        )
        handlers = IntakeHandlers(ctx.pool, directory, batcher)
        server.add_servicer(
            service_grpc.add_PaymentIntakeServiceServicer_to_server,
            PaymentIntakeServicer(handlers, settings.payer_hash_key),
        )
        receiver = NotificationReceiver(
            handlers,
            directory,
            settings.payer_hash_key,
            clock_skew_s=settings.clock_skew_s,
            deadline_ms=settings.webhook_deadline_ms,
        )
        # Bound before the gRPC server reports SERVING, so health implies the webhook is reachable.
        runner, port = await start_webhook(
            receiver, settings.webhook_host, settings.webhook_port, reuse_port=ctx.config.reuse_port
        )
        log.info("webhook listening", extra={"address": f"{settings.webhook_host}:{port}"})
        tasks: list[Awaitable[None] | Task] = [
            batcher.run(ctx.stop),
            _serve_webhook_until_stop(ctx, runner),
            _purge_nonces(ctx, settings.nonce_retention_s),
        ]
        admin = await _start_admin(ctx, settings)
        if admin is not None:
            tasks.append(_stop_admin_at_stop(ctx, admin))
        return tasks

    return wire


def main() -> None:
    config = RuntimeConfig.from_env("payment_intake", DEFAULT_GRPC_PORT, db_schema=DB_SCHEMA)
    settings = IntakeSettings.from_env()
    if settings.processes > 1 and workers.worker_index() is None:
        # One worker per core: a process computes on one core at a time, and payments are CPU-bound.
        configure_logging(config.service_name, config.log_level)
        if config.grpc_port == 0 or settings.webhook_port == 0 or (settings.admin_tls and settings.admin_port == 0):
            raise SystemExit(
                "FAPIAO_INTAKE_PROCESSES > 1 needs fixed FAPIAO_GRPC_PORT, FAPIAO_WEBHOOK_PORT"
                " (and FAPIAO_INTAKE_ADMIN_PORT with the admin API)"
            )
        sys.exit(workers.supervise("payment_intake", settings.processes, metrics_port=config.metrics_port))
    event_loop.run(
        run_service(
            config,
            service_names=[SERVICE_NAME],
            migrations=Path(__file__).parent / "migrations",
            wire=wiring(settings),
            # FAPIAO_INTAKE_TLS_* for the payment systems' edge; else the runtime's FAPIAO_GRPC_TLS_*.
            tls=TlsConfig.from_env("FAPIAO_INTAKE_TLS"),
        )
    )


if __name__ == "__main__":
    main()
