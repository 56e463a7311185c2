"""The system under test: where its clients connect, and the processes the nemesis may crash or pause.

`LocalSystem` is the single-host stack of `fapiao up` (fapiao_stack): every process on loopback, so it
takes process faults only. A multi-host cluster adds network partitions (`supports_network`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fapiao_stack.paths import RUN_DIR
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import pid_alive, pid_file_process, spawn, wait_bindable
from fapiao_stack.services import (
    GATEWAY_PORT,
    KAFKA_CONTROLLER_PORT,
    KAFKA_PORT,
    POSTGRES_PORT,
    REIMBURSEMENT_TLS_PORT,
    ServiceSpec,
    local_services,
    service_health,
)

RESTART_TIMEOUT_S = 300.0

# What a process is, for the nemesis: it picks faults by these kinds.
SERVICE = "service"
VALIDATOR = "validator"
BROKER = "broker"
POSTGRES = "postgres"


@dataclass(frozen=True)
class Endpoints:
    """Where the workload's clients and the checker connect."""

    gateway_url: str
    intake_grpc: str
    minting_grpc: str
    reimbursement_tls: str
    ledgers: dict[str, str]  # validator process name -> gRPC address
    kafka_bootstrap: str
    database_url: str  # the services' database (payment_intake, invoice_minting, reimbursement schemas)
    run_dir: Path
    # Health checks of every service process: name -> (host, port, "grpc" | "http", worker processes).
    health: dict[str, tuple[str, int, str, int]] = field(default_factory=dict)

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "pki"


class NetworkFaultsUnsupported(RuntimeError):
    """The system runs on one host: there is no network between its processes to cut."""


class System:
    """What the nemesis and the checker need from a running stack."""

    supports_network = False
    name = "single-host"  # how the run's summary names the system
    note = ""  # why the run is not on the multi-host cluster

    def endpoints(self) -> Endpoints:
        raise NotImplementedError

    def processes(self) -> dict[str, str]:
        """Every process the nemesis may fault: name -> kind (service, validator, broker, postgres)."""
        raise NotImplementedError

    def _pid(self, name: str) -> int | None:
        """The pid of process `name` while it is the stack's own process, else None."""
        raise NotImplementedError

    def signal(self, name: str, sig: int) -> bool:
        """Send `sig` to process `name` and its children; False when it is not running."""
        pid = self._pid(name)
        return pid is not None and signal_tree(pid, sig)

    def running(self, name: str) -> bool:
        return self._pid(name) is not None

    def restart(self, name: str) -> None:
        """Start process `name` again, the way the stack starts it (no-op when it runs)."""
        raise NotImplementedError

    def broker_of_node(self, node_id: int) -> str:
        """The process name of Kafka broker `node_id`."""
        raise NotImplementedError

    def hosts(self) -> list[str]:
        """Hosts a partition can isolate (empty on one host)."""
        return []

    def partition(self, kind: str, subject: str) -> None:
        """Cut the network: `kind` is isolate_host, broker_minority, below_min_isr,
        validator_from_kafka or service_from_database; `subject` names the host, broker, validator or
        service."""
        raise NetworkFaultsUnsupported("the single-host stack has no network to partition")

    def heal_network(self) -> None:
        """Undo every partition."""

    async def service_health(self, name: str) -> str:
        _host, port, health, processes = self.endpoints().health[name]
        return await service_health(port, health, processes)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    queue = [pid]
    while queue and len(found) < 10_000:
        current = queue.pop(0)
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def signal_tree(pid: int, sig: int) -> bool:
    """Send `sig` to `pid` and all its descendants; False when `pid` is not running."""
    if not pid_alive(pid):
        return False
    for target in descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)
    return True


class LocalSystem(System):
    """The single-host stack started by `fapiao up` (state in FAPIAO_RUN_DIR, default .run/)."""

    def __init__(self, run_dir: Path = RUN_DIR) -> None:
        self.run_dir = run_dir
        self.pid_dir = run_dir / "pids"
        state_file = run_dir / "stack.json"
        if not state_file.exists():
            raise ConnectionError("the local stack is not running: start it with `fapiao up`")
        self.state = json.loads(state_file.read_text())
        self._specs = {spec.name: spec for spec in local_services()}

    def endpoints(self) -> Endpoints:
        specs = self._specs
        return Endpoints(
            gateway_url=f"http://127.0.0.1:{GATEWAY_PORT}",
            intake_grpc=f"127.0.0.1:{specs['payment_intake'].port}",
            minting_grpc=f"127.0.0.1:{specs['invoice_minting'].port}",
            reimbursement_tls=f"127.0.0.1:{REIMBURSEMENT_TLS_PORT}",
            ledgers={s.name: f"127.0.0.1:{s.port}" for s in specs.values() if s.module == "ledger"},
            kafka_bootstrap=self.state["kafka_bootstrap"],
            database_url=self.state["database_url"],
            run_dir=self.run_dir,
            health={s.name: ("127.0.0.1", s.port, s.health, s.processes) for s in specs.values()},
        )

    def processes(self) -> dict[str, str]:
        kinds = {name: VALIDATOR if spec.module == "ledger" else SERVICE for name, spec in self._specs.items()}
        kinds["kafka"] = BROKER
        if not any(entry.get("external") for entry in self.state.get("postgres", [])):  # the embedded server
            kinds["postgres"] = POSTGRES
        return kinds

    def _postgres(self) -> LocalPostgres:
        return LocalPostgres(self.run_dir / "postgres", POSTGRES_PORT, self.run_dir / "logs" / "postgres.log")

    def _pid(self, name: str) -> int | None:
        """The live pid of process `name`; None when it is not running (a pid file whose pid now belongs
        to another program does not count: that process is never signalled)."""
        if name == "postgres":
            return self._postgres().server_pid()
        marker = "kafka.Kafka" if name == "kafka" else self._specs[name].module
        return pid_file_process(self.pid_dir / f"{name}.pid", marker)

    def broker_of_node(self, node_id: int) -> str:
        return "kafka"

    def restart(self, name: str) -> None:
        if self.running(name):
            return
        if name == "postgres":
            self._postgres().start(timeout_s=RESTART_TIMEOUT_S)
            return
        if name == "kafka":
            from fapiao_stack.kafka import KafkaBroker

            broker = KafkaBroker(
                self.run_dir / "kafka", KAFKA_PORT, KAFKA_CONTROLLER_PORT, self.run_dir / "logs" / "kafka.log"
            )
            wait_bindable([KAFKA_PORT, KAFKA_CONTROLLER_PORT])
            try:
                # A broker recovering its logs after kill -9 on a busy machine may take minutes to listen.
                broker.start(timeout_s=RESTART_TIMEOUT_S)
            finally:
                if broker.proc is not None:  # tracked even when slow, so it is never started twice
                    (self.pid_dir / "kafka.pid").write_text(str(broker.proc.pid))
            return
        self._spawn_service(self._specs[name])

    def _spawn_service(self, spec: ServiceSpec) -> None:
        from fapiao_stack.config import process_environment, stack_environment

        wait_bindable(spec.ports())
        base = stack_environment(self.run_dir, self.state["kafka_bootstrap"], self.state["database_url"])
        spawn(
            spec.argv(),
            log_file=self.run_dir / "logs" / f"{spec.name}.log",
            env=process_environment(spec, self.run_dir, base),
            pid_file=self.pid_dir / f"{spec.name}.pid",
        )
