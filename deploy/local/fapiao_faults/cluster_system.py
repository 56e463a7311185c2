"""The multi-host cluster as the system under test (`fapiao up --hosts`: fapiao_stack.cluster and
fapiao_stack.hosts): one network namespace per process, 3 brokers and 3 KRaft controllers, a
PostgreSQL server per validator organisation and one for the services.

The cluster's addresses are reachable from its hosts only, so once the cluster is up this process
joins the operator's host (`ops`) for good: the workload, the nemesis's Kafka admin client and the
checker all run from there. Processes are signalled by pid (one pid namespace) and restarted through
their host's launcher; partitions use the hosts' switch ports and blackhole routes.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
from typing import Any

from fapiao_stack.paths import LOG_DIR, RUN_DIR
from fapiao_stack.procs import pid_file_process, spawn
from fapiao_stack.services import REIMBURSEMENT_TLS_PORT, grpc_health, local_services

from fapiao_faults.system import (
    BROKER,
    POSTGRES,
    RESTART_TIMEOUT_S,
    SERVICE,
    VALIDATOR,
    Endpoints,
    System,
)

CONTROLLER = "controller"
_CLONE_NEWNET = 0x40000000
# The network namespace this process started in (an open file), kept while it is on the ops host.
_HOME_NAMESPACE: int | None = None


def _modules() -> tuple[Any, Any]:
    return importlib.import_module("fapiao_stack.cluster"), importlib.import_module("fapiao_stack.hosts")


class ClusterSystem(System):
    supports_network = True

    def __init__(self) -> None:
        cluster, hosts = _modules()
        self.cluster = cluster
        self.hosts_module = hosts
        state = cluster.read_state()
        if state is None:
            raise ConnectionError("no multi-host cluster is running: start it with `fapiao up --hosts`")
        self.state: dict[str, Any] = state
        recorded = state["network"]
        self.network = hosts.Network(prefix=str(recorded["prefix"]), subnet=str(recorded["subnet"]))
        self.where: dict[str, str] = cluster.addresses(self.network)
        self._specs = {spec.name: spec for spec in local_services()}
        self.brokers = [str(b["name"]) for b in state["brokers"]]
        self.controllers = [str(c["name"]) for c in state["controllers"]]
        self.databases = [str(p["name"]) for p in state["postgres"]]

    def join_ops_host(self) -> None:
        """Move this process (its main thread, before any other starts) onto the operator's host."""
        global _HOME_NAMESPACE
        if _HOME_NAMESPACE is None:
            _HOME_NAMESPACE = os.open("/proc/self/ns/net", os.O_RDONLY)
        self.hosts_module._setns(self.network.namespace(self.cluster.OPS))

    def endpoints(self) -> Endpoints:
        services: dict[str, str] = self.state["services"]
        return Endpoints(
            gateway_url=str(self.state["gateway_url"]),
            intake_grpc=services["payment_intake"],
            minting_grpc=services["invoice_minting"],
            reimbursement_tls=f"{self.where['reimbursement']}:{REIMBURSEMENT_TLS_PORT}",
            ledgers={name: address for name, address in services.items() if name.startswith("ledger-")},
            kafka_bootstrap=str(self.state["kafka_bootstrap"]),
            database_url=str(self.state["database_url"]),
            run_dir=RUN_DIR,
            health={s.name: (self.where[s.name], s.port, s.health, 1) for s in self._specs.values()},
        )

    def processes(self) -> dict[str, str]:
        kinds = {name: VALIDATOR if spec.module == "ledger" else SERVICE for name, spec in self._specs.items()}
        kinds.update(dict.fromkeys(self.brokers, BROKER))
        kinds.update(dict.fromkeys(self.controllers, CONTROLLER))
        kinds.update(dict.fromkeys(self.databases, POSTGRES))
        return kinds

    def _pid(self, name: str) -> int | None:
        """The live pid of process `name` (None when it is not running or its pid file names another program)."""
        cluster = self.cluster
        if name in self.databases:
            pid: int | None = cluster.postgres_servers(self.network, cluster.HOSTS_DIR, LOG_DIR)[name].server_pid()
            return pid
        marker = "kafka.Kafka" if name in self.brokers or name in self.controllers else self._specs[name].module
        return pid_file_process(cluster.PID_DIR / f"{name}.pid", marker)

    def broker_of_node(self, node_id: int) -> str:
        return str(self.cluster.broker_host(node_id))

    def restart(self, name: str) -> None:
        if self.running(name):
            return
        cluster = self.cluster
        if name in self.databases:
            cluster.postgres_servers(self.network, cluster.HOSTS_DIR, LOG_DIR)[name].start(timeout_s=RESTART_TIMEOUT_S)
            return
        if name in self.brokers or name in self.controllers:
            nodes = cluster.kafka_nodes(self.network, cluster.HOSTS_DIR, LOG_DIR)
            node = next(n for n in nodes if n.data_dir.name == name)
            node.launch()
            (cluster.PID_DIR / f"{name}.pid").write_text(str(node.proc.pid))
            node.wait_listening(RESTART_TIMEOUT_S)
            return
        databases = {str(p["name"]): f"postgresql://postgres@{p['address']}/fapiao" for p in self.state["postgres"]}
        envs = cluster._service_env(self.network, RUN_DIR, str(self.state["kafka_bootstrap"]), databases)
        spawn(
            [*self.network.launcher(name), *self._specs[name].argv()],
            log_file=LOG_DIR / f"{name}.log",
            env=envs[name],
            pid_file=cluster.PID_DIR / f"{name}.pid",
        )

    def hosts(self) -> list[str]:
        return sorted(host for host in self.where if host != self.cluster.OPS)

    def partition(self, kind: str, subject: str) -> None:
        network = self.network
        if kind == "isolate_host":
            network.isolate(subject)
        elif kind == "broker_minority":
            majority = [b for b in self.brokers if b != subject] + self.controllers
            network.cut([subject], majority)
        elif kind == "below_min_isr":
            for broker in self.brokers:
                if broker != subject:
                    network.isolate(broker)
        elif kind == "validator_from_kafka":
            network.cut([subject], self.brokers)
        elif kind == "service_from_database":
            network.cut([subject], [self.cluster.SERVICES_DB_HOST])
        else:
            raise ValueError(kind)

    def heal_network(self) -> None:
        self.network.heal_all()

    async def service_health(self, name: str) -> str:
        host, port, health, _ = self.endpoints().health[name]
        if health == "grpc":
            return await grpc_health(port, host=host)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            return "DOWN"
        try:
            writer.write(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return "SERVING" if b" 200 " in line else "NOT_SERVING"
        except (OSError, TimeoutError):
            return "DOWN"
        finally:
            writer.close()


def start_cluster_system() -> tuple[ClusterSystem, bool]:
    """Bring the cluster up (unless it runs), join the ops host; returns the system and whether we started it."""
    cluster, _ = _modules()
    started = cluster.read_state() is None
    if started:
        cluster.up()
    system = ClusterSystem()
    system.join_ops_host()
    return system, started


def _return_home() -> None:
    """Back to the namespace this process started in: stopping the cluster ends every process on its
    hosts, the ops host included."""
    if _HOME_NAMESPACE is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(_HOME_NAMESPACE, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns back to the machine's namespace: {os.strerror(err)}")


def stop_cluster_system() -> list[str]:
    _return_home()
    cluster, _ = _modules()
    stopped: list[str] = cluster.down()
    return stopped
