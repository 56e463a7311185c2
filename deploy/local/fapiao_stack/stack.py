"""Start, stop, restart and look at the local stack: Kafka, PostgreSQL and every service process.

State lives in .run/ (pid files, data, stack.json) and logs in .run/logs/. `down` stops everything it
started, including processes of a previous `up` whose terminal went away. A process is taken for running
only when the pid in its file is alive and is that process (after a crash the pid may have been reused).

stack.json records what `up` started: the Kafka bootstrap and database URL the services were given, each
service's address, and the servers as lists, "brokers" and "postgres" ([{"name": ..., "address": ...}]),
one entry each on the local stack, several on a cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fapiao_runtime.kafka import ensure_topics

from fapiao_stack.config import intake_admin_address, metrics_endpoints, process_environment, stack_environment
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.paths import LOG_DIR, RUN_DIR, STATE_FILE
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import pid_file_process, port_bindable, spawn, stop_pid_file, wait_bindable
from fapiao_stack.services import (
    KAFKA_CONTROLLER_PORT,
    KAFKA_PORT,
    PORT_OFFSET,
    POSTGRES_PORT,
    ServiceSpec,
    health_of,
    kafka_health,
    local_services,
    postgres_health,
)

PID_DIR = RUN_DIR / "pids"
KAFKA_NAME = "kafka"
POSTGRES_NAME = "postgres"
# An argument that tells the broker's JVM from any other process that got its pid after a crash.
_KAFKA_MAIN_CLASS = "kafka.Kafka"


@dataclass
class StackEndpoints:
    kafka_bootstrap: str
    database_url: str
    services: dict[str, str]


class StackNotRunning(RuntimeError):
    """`fapiao up` has not run (no .run/stack.json)."""


class UnknownProcess(ValueError):
    """A name that is none of the stack's processes."""


def _say(message: str) -> None:
    print(message, flush=True)


def _postgres() -> LocalPostgres:
    return LocalPostgres(RUN_DIR / "postgres", POSTGRES_PORT, LOG_DIR / "postgres.log")


def _broker() -> KafkaBroker:
    return KafkaBroker(RUN_DIR / "kafka", KAFKA_PORT, KAFKA_CONTROLLER_PORT, LOG_DIR / "kafka.log")


def _kafka_running() -> bool:
    return pid_file_process(PID_DIR / "kafka.pid", _KAFKA_MAIN_CLASS) is not None


def _start_kafka() -> str:
    """Start the broker (it is not running); return its bootstrap address once it listens."""
    broker = _broker()
    _say(f"starting Kafka (KRaft) on {broker.bootstrap} ...")
    broker.start()
    assert broker.proc is not None
    PID_DIR.mkdir(parents=True, exist_ok=True)
    (PID_DIR / "kafka.pid").write_text(str(broker.proc.pid))
    return broker.bootstrap


def _start_postgres(pg: LocalPostgres) -> None:
    """Start the embedded server unless it runs; the lock files a killed one left do not count as running."""
    if not pg.running():
        _say(f"starting PostgreSQL (embedded) on {pg.host}:{pg.port} ...")
        pg.start()


def _running(spec: ServiceSpec) -> bool:
    return pid_file_process(PID_DIR / f"{spec.name}.pid", spec.module) is not None


def _start_service(spec: ServiceSpec, env: dict[str, str]) -> None:
    spawn(
        spec.argv(),
        log_file=LOG_DIR / f"{spec.name}.log",
        env=process_environment(spec, RUN_DIR, env),
        pid_file=PID_DIR / f"{spec.name}.pid",
    )


def _write_state(state: dict[str, Any]) -> None:
    temporary = STATE_FILE.with_suffix(".tmp")
    temporary.write_text(json.dumps(state))
    temporary.replace(STATE_FILE)


class ClusterRunning(RuntimeError):
    """The multi-host cluster runs from this run directory."""


def _refuse_when_cluster_runs() -> None:
    """The multi-host cluster records itself in the same run directory: the single-host commands must not
    take its processes for theirs (nor overwrite its record)."""
    try:
        mode = json.loads(STATE_FILE.read_text()).get("mode")
    except (OSError, ValueError):
        return
    if mode == "hosts":
        raise ClusterRunning("the multi-host cluster runs here: use `fapiao status|restart|down --hosts`")


def read_state() -> dict[str, Any]:
    """What `up` recorded in .run/stack.json; StackNotRunning when it has not run."""
    try:
        state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        raise StackNotRunning("the local stack is not running: start it with `fapiao up`") from None
    return state


def up(timeout_s: float = 120.0) -> StackEndpoints:
    """Start everything not running yet and wait until every service reports SERVING."""
    _refuse_when_cluster_runs()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    kafka_bootstrap = _broker().bootstrap
    if not _kafka_running():
        _start_kafka()
    database_url = os.environ.get("DATABASE_URL", "")
    postgres: dict[str, Any]
    if database_url:
        address = urlsplit(database_url).netloc.rpartition("@")[2]
        postgres = {"name": "database", "address": address, "url": database_url, "external": True}
    else:
        pg = _postgres()
        _start_postgres(pg)
        database_url = pg.create_database("fapiao")
        postgres = {"name": POSTGRES_NAME, "address": f"{pg.host}:{pg.port}"}
    asyncio.run(ensure_topics(kafka_bootstrap))
    env = stack_environment(RUN_DIR, kafka_bootstrap, database_url)
    to_start = [s for s in local_services() if not _running(s)]
    ports = [p for s in to_start for p in s.ports()]
    if not all(port_bindable(p) for p in ports):
        _say("waiting for the services' ports to be released (a closed connection may hold one for up to 60 s) ...")
        wait_bindable(ports)
    endpoints = {spec.name: f"127.0.0.1:{spec.port}" for spec in local_services()}
    for spec in to_start:
        _start_service(spec, env)
    # Recorded before the wait: `restart` and `status` work on a stack that is still coming up.
    _write_state(
        {
            "port_offset": PORT_OFFSET,
            "kafka_bootstrap": kafka_bootstrap,
            "database_url": database_url,
            "services": endpoints,
            "brokers": [{"name": KAFKA_NAME, "address": kafka_bootstrap}],
            "postgres": [postgres],
            "merchant_admin": intake_admin_address(),
            "metrics": metrics_endpoints(),
        }
    )
    asyncio.run(_wait_serving(local_services(), timeout_s))
    return StackEndpoints(kafka_bootstrap, database_url, endpoints)


async def _wait_serving(specs: list[ServiceSpec], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = {s.name: s for s in specs}
    while pending:
        for name, spec in list(pending.items()):
            if await health_of(spec) == "SERVING":
                _say(f"  {name:<16} SERVING on 127.0.0.1:{spec.port}")
                del pending[name]
                continue
            if not _running(spec):
                log_file = LOG_DIR / f"{name}.log"
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:]) if log_file.exists() else ""
                raise RuntimeError(f"{name} exited during start-up; last lines of {log_file}:\n{tail}")
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not SERVING after {timeout_s}s: {', '.join(sorted(pending))}; logs in {LOG_DIR}")
        await asyncio.sleep(0.3)


def process_names() -> list[str]:
    """Every process `restart` knows: the broker, the database server, each service."""
    return [KAFKA_NAME, POSTGRES_NAME, *(spec.name for spec in local_services())]


def restart(name: str, timeout_s: float = 120.0) -> str:
    """Stop one process of the running stack (if it runs), start it again with the environment `up` gave
    it, and wait until it serves (a service: SERVING; Kafka and PostgreSQL: answering). Returns its address.

    UnknownProcess for a name that is none of process_names(); StackNotRunning before `up`.
    """
    specs = {spec.name: spec for spec in local_services()}
    if name not in process_names():
        raise UnknownProcess(f"no process {name!r} in the local stack; one of: {', '.join(process_names())}")
    state = read_state()
    if name == KAFKA_NAME:
        _say(f"stopping {name} ...")
        stop_pid_file(PID_DIR / "kafka.pid", timeout_s=30, marker=_KAFKA_MAIN_CLASS)
        return _start_kafka()
    if name == POSTGRES_NAME:
        if any(entry.get("external") for entry in state.get("postgres", [])):
            raise UnknownProcess("the stack uses an external database (DATABASE_URL): restart that server yourself")
        pg = _postgres()
        _say(f"stopping {name} ...")
        pg.stop()
        _start_postgres(pg)
        return f"{pg.host}:{pg.port}"
    spec = specs[name]
    _say(f"stopping {name} ...")
    stop_pid_file(PID_DIR / f"{name}.pid", timeout_s=15, marker=spec.module)
    if not all(port_bindable(p) for p in spec.ports()):
        _say(f"waiting for {name}'s ports to be released ...")
        wait_bindable(spec.ports())
    _start_service(spec, stack_environment(RUN_DIR, state["kafka_bootstrap"], state["database_url"]))
    asyncio.run(_wait_serving([spec], timeout_s))
    return f"127.0.0.1:{spec.port}"


def down() -> list[str]:
    """Stop every process of the stack (services first, then Kafka, then PostgreSQL)."""
    _refuse_when_cluster_runs()
    stopped = []
    for spec in reversed(local_services()):
        if stop_pid_file(PID_DIR / f"{spec.name}.pid", timeout_s=15, marker=spec.module):
            stopped.append(spec.name)
    if stop_pid_file(PID_DIR / "kafka.pid", timeout_s=30, marker=_KAFKA_MAIN_CLASS):
        stopped.append(KAFKA_NAME)
    if _postgres().stop():
        stopped.append(POSTGRES_NAME)
    STATE_FILE.unlink(missing_ok=True)
    return stopped


async def status() -> dict[str, str]:
    return {name: str(entry["health"]) for name, entry in (await detailed_status()).items()}


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


def _servers(state: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The brokers and PostgreSQL servers stack.json lists; the local stack's one of each without it."""
    brokers = state.get("brokers") or [{"name": KAFKA_NAME, "address": _broker().bootstrap}]
    pg = _postgres()
    postgres = state.get("postgres") or [{"name": POSTGRES_NAME, "address": f"{pg.host}:{pg.port}"}]
    return brokers, postgres


async def detailed_status() -> dict[str, dict[str, object]]:
    """Every broker and PostgreSQL server (answering or not), then every service: its health, and the
    consumer lag and outbox backlog read from its metrics endpoint. Each entry has a "kind" ("kafka",
    "postgres" or "service"), a "health" (SERVING, DOWN, or a service's own status) and an "address"."""
    try:
        state = read_state()
    except StackNotRunning:
        state = {}
    brokers, postgres = _servers(state)
    report: dict[str, dict[str, object]] = {}
    for broker in brokers:
        health, known = await kafka_health(broker["address"])
        report[broker["name"]] = {"kind": "kafka", "health": health, "address": broker["address"]}
        if health == "SERVING":
            report[broker["name"]]["brokers_in_cluster"] = known
    for server in postgres:
        url = server.get("url") or f"postgresql://postgres@{server['address']}/postgres"
        health = await postgres_health(url)
        report[server["name"]] = {"kind": "postgres", "health": health, "address": server["address"]}
    addresses: dict[str, str] = state.get("services") or {}
    for spec in local_services():
        address = addresses.get(spec.name, f"127.0.0.1:{spec.port}")
        entry: dict[str, object] = {
            "kind": "service",
            "health": await health_of(spec, host=address.rpartition(":")[0]),
            "address": address,
        }
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
    if command == "restart":
        if len(argv) != 2:
            _say(f"usage: restart NAME (one of: {', '.join(process_names())})")
            return 2
        try:
            address = restart(argv[1])
        except (UnknownProcess, StackNotRunning) as exc:
            _say(str(exc))
            return 2 if isinstance(exc, UnknownProcess) else 1
        _say(f"{argv[1]} restarted: SERVING on {address}")
        return 0
    _say(f"unknown command {command!r}; use up, down, status or restart (the demo: python -m fapiao_cli.demo)")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
