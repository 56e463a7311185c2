"""Start and stop the whole local stack: Kafka, PostgreSQL and every service process.

State lives in .run/ (pid files, data) and logs in .run/logs/. `down` stops everything it started,
including processes of a previous `up` whose terminal went away.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass

from fapiao_runtime.kafka import ensure_topics

from fapiao_stack.config import process_environment, stack_environment
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.paths import LOG_DIR, RUN_DIR
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import pid_alive, port_bindable, spawn, stop_pid_file, wait_bindable
from fapiao_stack.services import KAFKA_CONTROLLER_PORT, KAFKA_PORT, POSTGRES_PORT, health_of, local_services

PID_DIR = RUN_DIR / "pids"
STATE_FILE = RUN_DIR / "stack.json"


@dataclass
class StackEndpoints:
    kafka_bootstrap: str
    database_url: str
    services: dict[str, str]


def _say(message: str) -> None:
    print(message, flush=True)


def _postgres() -> LocalPostgres:
    return LocalPostgres(RUN_DIR / "postgres", POSTGRES_PORT, LOG_DIR / "postgres.log")


def up(timeout_s: float = 120.0) -> StackEndpoints:
    """Start everything not running yet and wait until every service reports SERVING."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    kafka_pid = PID_DIR / "kafka.pid"
    kafka_bootstrap = f"127.0.0.1:{KAFKA_PORT}"
    if not (kafka_pid.exists() and pid_alive(int(kafka_pid.read_text()))):
        _say(f"starting Kafka (KRaft) on {kafka_bootstrap} ...")
        broker = KafkaBroker(RUN_DIR / "kafka", KAFKA_PORT, KAFKA_CONTROLLER_PORT, LOG_DIR / "kafka.log")
        broker.start()
        assert broker.proc is not None
        PID_DIR.mkdir(parents=True, exist_ok=True)
        kafka_pid.write_text(str(broker.proc.pid))
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url:
        pg = _postgres()
        if not (pg.data_dir / "postmaster.pid").exists():
            _say(f"starting PostgreSQL (embedded) on 127.0.0.1:{POSTGRES_PORT} ...")
            pg.start()
        database_url = pg.create_database("fapiao")
    asyncio.run(ensure_topics(kafka_bootstrap))
    env = stack_environment(RUN_DIR, kafka_bootstrap, database_url)
    to_start = [s for s in local_services() if not _running(s.name)]
    ports = [p for s in to_start for p in s.ports()]
    if not all(port_bindable(p) for p in ports):
        _say("waiting for the services' ports to be released (a closed connection may hold one for up to 60 s) ...")
        wait_bindable(ports)
    endpoints = {spec.name: f"127.0.0.1:{spec.port}" for spec in local_services()}
    for spec in to_start:
        pid_file = PID_DIR / f"{spec.name}.pid"
        spawn(
            spec.argv(),
            log_file=LOG_DIR / f"{spec.name}.log",
            env=process_environment(spec, RUN_DIR, env),
            pid_file=pid_file,
        )
    asyncio.run(_wait_serving(timeout_s))
    STATE_FILE.write_text(
        json.dumps({"kafka_bootstrap": kafka_bootstrap, "database_url": database_url, "services": endpoints})
    )
    return StackEndpoints(kafka_bootstrap, database_url, endpoints)


def _running(name: str) -> bool:
    pid_file = PID_DIR / f"{name}.pid"
    return pid_file.exists() and pid_alive(int(pid_file.read_text()))


async def _wait_serving(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = {s.name: s for s in local_services()}
    while pending:
        for name, spec in list(pending.items()):
            if await health_of(spec) == "SERVING":
                _say(f"  {name:<16} SERVING on 127.0.0.1:{spec.port}")
                del pending[name]
                continue
            if not _running(name):
                log_file = LOG_DIR / f"{name}.log"
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:]) if log_file.exists() else ""
                raise RuntimeError(f"{name} exited during start-up; last lines of {log_file}:\n{tail}")
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not SERVING after {timeout_s}s: {', '.join(sorted(pending))}; logs in {LOG_DIR}")
        await asyncio.sleep(0.3)


def down() -> list[str]:
    """Stop every process of the stack (services first, then Kafka, then PostgreSQL)."""
    stopped = []
    for spec in reversed(local_services()):
        if stop_pid_file(PID_DIR / f"{spec.name}.pid", timeout_s=15):
            stopped.append(spec.name)
    if stop_pid_file(PID_DIR / "kafka.pid", timeout_s=30):
        stopped.append("kafka")
    pg = _postgres()
    if (pg.data_dir / "postmaster.pid").exists():
        pg.stop()
        stopped.append("postgres")
    STATE_FILE.unlink(missing_ok=True)
    return stopped


async def status() -> dict[str, str]:
    return {spec.name: await health_of(spec) for spec in local_services()}


async def _scrape_metrics(port: int) -> dict[str, float]:
    """Sum of the fapiao_consumer_lag and fapiao_outbox_backlog samples on a service's /metrics."""
    figures: dict[str, float] = {}
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        body = (await asyncio.wait_for(reader.read(), 2.0)).decode(errors="replace")
        writer.close()
    except (OSError, TimeoutError):
        return figures
    for line in body.splitlines():
        for metric, name in (("fapiao_consumer_lag", "consumer_lag"), ("fapiao_outbox_backlog", "outbox_backlog")):
            if line.startswith(metric) and not line.startswith("#"):
                try:
                    figures[name] = figures.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
                except ValueError:
                    continue
    return figures


async def detailed_status() -> dict[str, dict[str, object]]:
    """Health of every process plus consumer lag and outbox backlog read from its metrics endpoint."""
    report: dict[str, dict[str, object]] = {}
    for spec in local_services():
        entry: dict[str, object] = {"health": await health_of(spec), "address": f"127.0.0.1:{spec.port}"}
        if spec.metrics_port and entry["health"] != "DOWN":
            entry.update(await _scrape_metrics(spec.metrics_port))
        report[spec.name] = entry
    return report


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "up":
        endpoints = up()
        _say(f"Kafka      {endpoints.kafka_bootstrap}")
        _say(f"PostgreSQL {endpoints.database_url}")
        _say(f"logs       {LOG_DIR}")
        return 0
    if command == "down":
        stopped = down()
        _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if command == "status":
        states = asyncio.run(status())
        for name, state in states.items():
            _say(f"{name:<16} {state}")
        return 0 if all(s == "SERVING" for s in states.values()) else 1
    if command == "demo":
        from fapiao_cli.demo import run_demo

        return run_demo()
    _say(f"unknown command {command!r}; use up, down, status or demo")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
