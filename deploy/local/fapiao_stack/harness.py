"""Harness shared by tests and benchmarks: run service processes and read topics against a real broker and database."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from fapiao.common.v1 import envelope_pb2
from fapiao_runtime.config import RuntimeConfig

from fapiao_stack.procs import free_port, spawn, stop_pid
from fapiao_stack.services import service_health


async def create_database(admin_url: str, prefix: str) -> str:
    """Create an empty database named `prefix` + a random suffix on the server of `admin_url`; return its URL."""
    import asyncpg

    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"{admin_url.rpartition('/')[0]}/{name}"


async def drop_database(admin_url: str, database_url: str) -> None:
    import asyncpg

    name = database_url.rpartition("/")[2]
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass
class ServiceProcess:
    """A service started with `python -m module`; `port` is its gRPC (or HTTP) port."""

    module: str
    port: int
    log_file: Path
    proc: object = None
    env: dict[str, str] = field(default_factory=dict)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (crash test)."""
        import signal

        assert self.proc is not None
        stop_pid(self.proc.pid, timeout_s=0.1, sig=signal.SIGKILL)  # type: ignore[attr-defined]
        self.proc.wait()  # type: ignore[attr-defined]

    def terminate(self) -> None:
        assert self.proc is not None
        stop_pid(self.proc.pid, timeout_s=15)  # type: ignore[attr-defined]
        self.proc.wait()  # type: ignore[attr-defined]

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@dataclass
class StackUnderTest:
    kafka_bootstrap: str
    database_url: str
    topic_prefix: str
    tmp_path: Path

    def config(self, service_name: str, db_schema: str | None = None, grpc_port: int = 0) -> RuntimeConfig:
        """An in-process RuntimeConfig pointing at this test's broker, database and topics."""
        return RuntimeConfig(
            service_name=service_name,
            kafka_bootstrap=self.kafka_bootstrap,
            database_url=self.database_url,
            db_schema=db_schema or service_name,
            grpc_host="127.0.0.1",
            grpc_port=grpc_port,
            topic_prefix=self.topic_prefix,
            log_level="INFO",
            db_pool_max_size=20,
            metrics_port=0,
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "FAPIAO_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "DATABASE_URL": self.database_url,
                "FAPIAO_TOPIC_PREFIX": self.topic_prefix,
                "PYTHONUNBUFFERED": "1",
                # A service's own temporary files (a worker supervisor's metrics directory) stay in the
                # run's directory: a test that kills a service leaves nothing behind in the system's.
                "TMPDIR": str(self.tmp_path),
            }
        )
        env.update(extra)
        return env

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    async def start_service(
        self,
        module: str,
        *,
        health: str = "grpc",
        timeout_s: float = 60.0,
        port: int = 0,
        processes: int = 1,
        **extra_env: str,
    ) -> ServiceProcess:
        """Start `python -m module` on a free port and wait until its health check says SERVING (a
        service run as `processes` workers: once all of them listen)."""
        port = port or free_port()
        env = self.env(**extra_env)
        env["FAPIAO_GRPC_PORT" if health == "grpc" else "FAPIAO_HTTP_PORT"] = str(port)
        log_file = self.tmp_path / f"{module}-{port}-{uuid.uuid4().hex[:6]}.log"
        proc = spawn([sys.executable, "-m", module], log_file=log_file, env=env)
        service = ServiceProcess(module, port, log_file, proc, env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await service_health(port, health, processes) == "SERVING":
                return service
            if proc.poll() is not None:
                raise RuntimeError(f"{module} exited with {proc.returncode}:\n{service.log_text()[-4000:]}")
            await asyncio.sleep(0.2)
        service.kill()
        raise TimeoutError(f"{module} not SERVING within {timeout_s}s:\n{service.log_text()[-4000:]}")


@asynccontextmanager
async def topic_reader(bootstrap: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read_envelopes(
    bootstrap: str, topic: str, *, expected: int | None = None, timeout_s: float = 10.0, idle_s: float = 1.5
) -> list[envelope_pb2.EventEnvelope]:
    """Read envelopes from the start of `topic` until `expected` arrived (or, if None, the topic is idle)."""
    found: list[envelope_pb2.EventEnvelope] = []
    async with topic_reader(bootstrap, topic) as consumer:
        deadline = time.monotonic() + timeout_s
        last_seen = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    envelope = envelope_pb2.EventEnvelope()
                    envelope.ParseFromString(record.value)
                    found.append(envelope)
                    last_seen = time.monotonic()
            if expected is not None and len(found) >= expected:
                # keep reading briefly to catch unexpected extras
                if time.monotonic() - last_seen > 0.5:
                    break
            elif expected is None and time.monotonic() - last_seen > idle_s:
                break
    return found
