"""Process lifecycle for a service: connect, migrate, serve, relay, consume; stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer

from fapiao_runtime import collector, event_loop, metrics
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.consumer import EventConsumer
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig
from fapiao_runtime.kafka import ensure_topics, new_producer
from fapiao_runtime.logs import configure_logging
from fapiao_runtime.outbox import OutboxRelay

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a running service shares with its handlers and background tasks."""

    config: RuntimeConfig
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    stop: asyncio.Event
    relay: OutboxRelay
    consumers: list[EventConsumer] = field(default_factory=list)
    # Set by `wire` when the service can answer only after some start-up work (e.g. a validator
    # loading its chains): health says NOT_SERVING until it is set.
    ready: asyncio.Event | None = None

    async def update_gauges(self) -> None:
        collector.drain_pauses()
        metrics.OUTBOX_BACKLOG.set(await self.relay.backlog())
        for consumer in self.consumers:
            metrics.CONSUMER_LAG.labels(consumer=consumer.name).set(await consumer.lag())


async def _refresh_gauges(ctx: ServiceContext, interval_s: float = 5.0) -> None:
    """Keep the outbox-backlog and consumer-lag gauges (and the collector's pause timings) current for
    /metrics and `fapiao status`."""
    while not ctx.stop.is_set():
        try:
            await ctx.update_gauges()
        except Exception:  # metrics must never take the service down
            log.debug("gauge refresh failed", exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), timeout=interval_s)


# A service's wiring: given the context and the server, register servicers and return background
# coroutines (consumers, relays) to run until stop.
Wiring = Callable[[ServiceContext, GrpcServer], Awaitable[list[Awaitable[None]]]]


async def run_service(
    config: RuntimeConfig,
    *,
    service_names: list[str],
    migrations: Path | None,
    wire: Wiring,
    tls: TlsConfig | None = None,
    stop: asyncio.Event | None = None,
    interceptors: list[object] | None = None,
    producer_linger_ms: int = 2,
) -> None:
    """Run one service process until SIGTERM/SIGINT (or `stop` is set), then shut down gracefully.

    Order on start: logging, topics, pool + migrations, producer, outbox relay, servicers, gRPC server.
    The server uses `tls`, else FAPIAO_GRPC_TLS_* (TlsConfig.from_env), else plaintext.
    Order on stop: health NOT_SERVING, in-flight RPCs drain, background tasks stop, producer flushes.
    """
    configure_logging(config.service_name, config.log_level)
    collector.watch_pauses()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics.serve_metrics(config.metrics_port)
    await ensure_topics(config.kafka_bootstrap, config.topic_prefix)
    pool = await create_pool(config.database_url, config.db_schema, max_size=config.db_pool_max_size)
    await apply_migrations(pool, config.db_schema, migrations)
    producer = new_producer(config.kafka_bootstrap, client_id=config.service_name, linger_ms=producer_linger_ms)
    await producer.start()
    relay = OutboxRelay(pool, producer, schema=config.db_schema, topic_prefix=config.topic_prefix)
    ctx = ServiceContext(config=config, pool=pool, producer=producer, stop=stop, relay=relay)
    server_interceptors: list[grpc.aio.ServerInterceptor] = interceptors or []  # type: ignore[assignment]
    server = GrpcServer(service_names, interceptors=server_interceptors, reuse_port=config.reuse_port)
    background = await wire(ctx, server)
    tasks = [asyncio.ensure_future(relay.run(stop)), asyncio.ensure_future(_refresh_gauges(ctx))]
    tasks += [asyncio.ensure_future(c) for c in background]
    await server.start(
        config.grpc_host, config.grpc_port, tls if tls is not None else TlsConfig.from_env(), ready=ctx.ready
    )
    frozen = collector.freeze_startup_heap()
    collector.drain_pauses()
    log.info(
        "service ready",
        extra={"grpc_port": server.port, "event_loop": event_loop.loop_name(), "frozen_objects": frozen},
    )
    try:
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                log.error("background task failed; shutting down", exc_info=task.exception())
        stop.set()
    finally:
        await server.stop(5.0)
        for task in tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5.0)
        await producer.stop()
        await pool.close()
        log.info("service stopped")
