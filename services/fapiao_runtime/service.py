"""Process lifecycle for a service: connect, migrate, serve, relay, consume; stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer
from grpc_health.v1 import health_pb2

from fapiao_runtime import collector, event_loop, metrics
from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.consumer import EventConsumer, report_consumer_lag
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.grpc_server import GrpcServer, TlsConfig
from fapiao_runtime.kafka import ensure_topics, new_producer
from fapiao_runtime.logs import configure_logging
from fapiao_runtime.outbox import OutboxRelay
from fapiao_runtime.resilience import DependencyTimeout, keep_running, startup_deadline_s, wait_for_dependency

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
        await report_consumer_lag()  # every consumer of the process (`consumer.watch_lag`)


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


@dataclass(frozen=True)
class Task:
    """A background task that rides out a lost database or broker: `run()` is started again (with
    back-off) when it fails for a lost dependency, so it must resume from durable state, as after a
    restart of the process. Any other failure stops the process (`resilience.keep_running`)."""

    name: str
    run: Callable[[], Awaitable[None]]


# A service's wiring: given the context and the server, register servicers and return its background
# work to run until stop: Tasks (restarted after a lost dependency) or plain coroutines (run once; a
# failure stops the process).
Wiring = Callable[[ServiceContext, GrpcServer], Awaitable[list[Awaitable[None] | Task]]]

DATABASE_PROBE_S = 1.0
SHUTDOWN_STEP_S = 10.0
DATABASE_PROBE_TIMEOUT_S = 3.0


async def _probe_database(pool: asyncpg.Pool) -> BaseException | None:
    """None when the database answers a trivial query in time, else what went wrong."""
    try:
        async with asyncio.timeout(DATABASE_PROBE_TIMEOUT_S):
            await pool.fetchval("SELECT 1")
    except Exception as exc:  # any failure to answer counts: a timeout, a refused or broken connection
        return exc
    return None


async def _track_health(ctx: ServiceContext, server: GrpcServer, service_names: list[str]) -> None:
    """Health NOT_SERVING while the database does not answer (or the service is not ready: a validator
    reloading its chains), SERVING again once it does: readiness follows the dependency every request
    path needs, without an operator. A broker outage leaves health SERVING: writes go to the outbox and
    are published after the broker is back."""
    if ctx.ready is not None:  # until the service is first ready, GrpcServer.start keeps it NOT_SERVING
        ready = asyncio.ensure_future(ctx.ready.wait())
        stopped = asyncio.ensure_future(ctx.stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stopped.cancel()
    serving = True
    database_down = False
    while not ctx.stop.is_set():
        failure = await _probe_database(ctx.pool)
        if (failure is not None) != database_down:
            database_down = failure is not None
            if database_down:
                log.warning("database unreachable; health NOT_SERVING", extra={"error": repr(failure)[:300]})
            else:
                log.info("database reachable again")
        healthy = not database_down and (ctx.ready is None or ctx.ready.is_set())
        if healthy != serving and not ctx.stop.is_set():
            status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in ["", *service_names]:
                await server.health.set(name, status)
            log.info("health %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            serving = healthy
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), timeout=DATABASE_PROBE_S)


async def _start_producer(config: RuntimeConfig, linger_ms: int) -> AIOKafkaProducer:
    producer = new_producer(config.kafka_bootstrap, client_id=config.service_name, linger_ms=linger_ms)
    try:
        await producer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise
    return producer


def _as_task(item: Awaitable[None] | Task, ctx: ServiceContext) -> asyncio.Future[None]:
    if isinstance(item, Task):

        async def lost() -> str | None:
            return "database" if await _probe_database(ctx.pool) is not None else None

        return asyncio.ensure_future(keep_running(item.name, item.run, ctx.stop, lost=lost))
    return asyncio.ensure_future(item)


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
    Start-up waits for the broker and the database (back-off, FAPIAO_STARTUP_DEADLINE_S); past the
    deadline the process exits non-zero. While running, background Tasks ride out a lost dependency and
    health follows the database (`_track_health`).
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
    deadline = time.monotonic() + startup_deadline_s()
    pool: asyncpg.Pool | None = None
    try:
        await wait_for_dependency(
            "kafka topics", lambda: ensure_topics(config.kafka_bootstrap, config.topic_prefix), deadline, stop=stop
        )
        pool = await wait_for_dependency(
            "database connection",
            lambda: create_pool(config.database_url, config.db_schema, max_size=config.db_pool_max_size),
            deadline,
            stop=stop,
        )
        await wait_for_dependency(
            "database migrations", lambda: apply_migrations(pool, config.db_schema, migrations), deadline, stop=stop
        )
        producer = await wait_for_dependency(
            "kafka producer", lambda: _start_producer(config, producer_linger_ms), deadline, stop=stop
        )
    except DependencyTimeout as exc:
        log.error("start-up deadline passed; exiting", extra={"error": str(exc)})
        if pool is not None:
            pool.terminate()
        raise SystemExit(f"{config.service_name}: {exc}") from None
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    relay = OutboxRelay(pool, producer, schema=config.db_schema, topic_prefix=config.topic_prefix)
    ctx = ServiceContext(config=config, pool=pool, producer=producer, stop=stop, relay=relay)
    assert pool is not None
    server_interceptors: list[grpc.aio.ServerInterceptor] = interceptors or []  # type: ignore[assignment]
    server = GrpcServer(service_names, interceptors=server_interceptors, reuse_port=config.reuse_port)
    background = await wire(ctx, server)
    tasks: list[asyncio.Future[None]] = [
        _as_task(Task("outbox relay", lambda: relay.run(stop)), ctx),
        asyncio.ensure_future(_refresh_gauges(ctx)),
    ]
    tasks += [_as_task(item, ctx) for item in background]
    await server.start(
        config.grpc_host, config.grpc_port, tls if tls is not None else TlsConfig.from_env(), ready=ctx.ready
    )
    tasks.append(asyncio.ensure_future(_track_health(ctx, server, service_names)))
    frozen = collector.freeze_startup_heap()
    collector.drain_pauses()
    log.info(
        "service ready",
        extra={"grpc_port": server.port, "event_loop": event_loop.loop_name(), "frozen_objects": frozen},
    )
    try:
        waiter = asyncio.ensure_future(stop.wait())
        watched: list[asyncio.Future[Any]] = [waiter, *tasks]
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                log.error("background task failed; shutting down", exc_info=task.exception())
        stop.set()
    finally:
        await server.stop(5.0)
        for task in tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5.0)
        # Bounded: during an outage the producer's flush and the pool's goodbyes may never complete.
        try:
            await asyncio.wait_for(producer.stop(), timeout=SHUTDOWN_STEP_S)
        except Exception as exc:  # unsent events stay in the outbox; they are published after a restart
            log.warning("producer did not stop cleanly", extra={"error": repr(exc)[:300]})
        try:
            await asyncio.wait_for(pool.close(), timeout=SHUTDOWN_STEP_S)
        except Exception:
            pool.terminate()
        log.info("service stopped")
