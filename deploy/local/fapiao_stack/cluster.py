"""The multi-host cluster (`fapiao up --hosts`): every process of the stack on a host of its own.

Hosts are network namespaces on one bridge (fapiao_stack.hosts), at fixed addresses of the cluster's
subnet (FAPIAO_CLUSTER_SUBNET, default 10.231.0.0/24; namespaces named FAPIAO_CLUSTER_PREFIX + host,
default `fapiao-`):

    ops              .2      the operator's host: health checks, topic creation, test clients
    kraft-1..3       .11-13  the KRaft controller quorum (3 voters)
    kafka-1..3       .21-23  the brokers (internal and Fapiao topics: 3 replicas, min ISR 2)
    pg-services      .30     PostgreSQL of payment_intake, invoice_minting and reimbursement
    pg-ledger-1..4   .31-34  one PostgreSQL server per validator organisation
    payment_intake   .40     and invoice_minting .41, reimbursement .42, gateway .43
    ledger-1..4      .51-54  the validators

The controllers run apart from the brokers (as KRaft recommends in production): with two brokers cut
off, the quorum still shrinks the in-sync replicas of their partitions, and a write that needs two
in-sync replicas is refused with NOT_ENOUGH_REPLICAS instead of waiting.

Every process listens on its host's address only. The machine's own (root) namespace has no route to
the subnet: health checks run on the ops host (`python -m fapiao_stack.cluster probe` started inside
it), and an operator reaches the services from there (`ip netns exec fapiao-ops ...`). The services'
environment is the local stack's (fapiao_stack.config) with the hosts' addresses; state, data and
logs are under .run/ as for the local stack, the cluster recorded in .run/stack.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from fapiao_runtime.kafka import ensure_topics

from fapiao_stack.config import intake_admin_address, metrics_endpoints, process_environment, stack_environment
from fapiao_stack.hosts import Network, prefix_from_env, run_in_netns, subnet_from_env
from fapiao_stack.kafka import KafkaBroker, new_cluster_id
from fapiao_stack.paths import LOG_DIR, RUN_DIR, STATE_FILE
from fapiao_stack.postgres import LocalPostgres
from fapiao_stack.procs import pid_alive, port_open, spawn, stop_pid_file
from fapiao_stack.services import (
    GATEWAY_PORT,
    INTAKE_WEBHOOK_PORT,
    LEDGER_VALIDATORS,
    PORT_OFFSET,
    ServiceSpec,
    grpc_health,
    http_health,
    local_services,
)

OPS = "ops"
KAFKA_PORT = 9092
CONTROLLER_PORT = 9093
POSTGRES_PORT = 5432
BROKERS = 3
CONTROLLERS = 3
REPLICATION_FACTOR = 3
MIN_INSYNC_REPLICAS = 2
REPLICATION_ENV = {
    "FAPIAO_KAFKA_REPLICATION_FACTOR": str(REPLICATION_FACTOR),
    "FAPIAO_KAFKA_MIN_INSYNC_REPLICAS": str(MIN_INSYNC_REPLICAS),
}
BROKER_HEAP = "384m"
CONTROLLER_HEAP = "256m"
# JVM thread pools sized for one core and no optimising compiler: six Kafka nodes share the
# machine's cores with PostgreSQL and the services.
KAFKA_JVM_OPTIONS = ("-XX:ActiveProcessorCount=1", "-XX:TieredStopAtLevel=1")
KAFKA_THREADS = {"num.network.threads": "2", "num.io.threads": "2", "background.threads": "2"}
SERVICES_DB_HOST = "pg-services"
PID_DIR = RUN_DIR / "pids"
HOSTS_DIR = RUN_DIR / "hosts"

_SERVICE_OFFSETS = {"payment_intake": 40, "invoice_minting": 41, "reimbursement": 42, "gateway": 43}


def controller_host(index: int) -> str:
    return f"kraft-{index}"


def broker_host(index: int) -> str:
    return f"kafka-{index}"


def ledger_db_host(index: int) -> str:
    return f"pg-ledger-{index}"


def host_layout() -> dict[str, int]:
    """Every host of the cluster and its offset in the subnet, in start order."""
    layout = {OPS: 2}
    layout.update({controller_host(i): 10 + i for i in range(1, CONTROLLERS + 1)})
    layout.update({broker_host(i): 20 + i for i in range(1, BROKERS + 1)})
    layout[SERVICES_DB_HOST] = 30
    layout.update({ledger_db_host(i): 30 + i for i in range(1, LEDGER_VALIDATORS + 1)})
    for spec in local_services():
        if spec.module == "ledger":
            layout[spec.name] = 50 + int(spec.name.rsplit("-", 1)[1])
        else:
            layout[spec.name] = _SERVICE_OFFSETS[spec.name]
    return layout


def network_from_env() -> Network:
    return Network(prefix=prefix_from_env(), subnet=subnet_from_env())


def addresses(network: Network) -> dict[str, str]:
    """Host name -> address, for every host of the layout."""
    return {host: network.address(offset) for host, offset in host_layout().items()}


# -- Kafka -----------------------------------------------------------------------------------------


def _cluster_id(run_dir: Path) -> str:
    """The KRaft cluster id, chosen once and kept under .run/hosts (every node is formatted with it)."""
    path = run_dir / "kafka-cluster-id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_cluster_id())
    return path.read_text().strip()


def kafka_nodes(network: Network, run_dir: Path, log_dir: Path) -> list[KafkaBroker]:
    """The controllers (node ids 101..) then the brokers (node ids 1..), each on its own host."""
    where = addresses(network)
    cluster_id = _cluster_id(run_dir)
    voters = [f"{100 + i}@{where[controller_host(i)]}:{CONTROLLER_PORT}" for i in range(1, CONTROLLERS + 1)]
    nodes = []
    for roles, count, host_of, first_id, heap in (
        ("controller", CONTROLLERS, controller_host, 100, CONTROLLER_HEAP),
        ("broker", BROKERS, broker_host, 0, BROKER_HEAP),
    ):
        for i in range(1, count + 1):
            host = host_of(i)
            nodes.append(
                KafkaBroker(
                    run_dir / host,
                    KAFKA_PORT,
                    CONTROLLER_PORT,
                    log_dir / f"{host}.log",
                    heap=heap,
                    host=where[host],
                    node_id=first_id + i,
                    voters=voters,
                    cluster_id=cluster_id,
                    replication=REPLICATION_FACTOR,
                    roles=roles,
                    netns=network.namespace(host),
                    jvm_options=KAFKA_JVM_OPTIONS,
                    overrides=KAFKA_THREADS if roles == "broker" else {},
                )
            )
    return nodes


def bootstrap_of(network: Network) -> str:
    where = addresses(network)
    return ",".join(f"{where[broker_host(i)]}:{KAFKA_PORT}" for i in range(1, BROKERS + 1))


def start_kafka(nodes: list[KafkaBroker], pid_dir: Path, timeout_s: float = 120.0) -> None:
    """Start the nodes not running yet, one after the other (controllers first), each until it listens."""
    pid_dir.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        name = node.data_dir.name
        pid_file = pid_dir / f"{name}.pid"
        if pid_file.exists() and pid_alive(int(pid_file.read_text())):
            continue
        _say(f"starting Kafka {node.roles} {name} on {node.host} ...")
        node.launch()
        assert node.proc is not None
        pid_file.write_text(str(node.proc.pid))
        node.wait_listening(timeout_s)


def create_topics(network: Network, bootstrap: str, prefix: str = "") -> None:
    """Fapiao's topics with 3 replicas and min ISR 2 (FAPIAO_KAFKA_REPLICATION_FACTOR and
    FAPIAO_KAFKA_MIN_INSYNC_REPLICAS, as the services get them), created from the ops host."""
    os.environ.update(REPLICATION_ENV)
    run_in_netns(network.namespace(OPS), asyncio.run, ensure_topics(bootstrap, prefix))


def partition_leaders(network: Network, bootstrap: str, topic: str) -> dict[int, str]:
    """Partition -> the host of its leader (`kafka-N`), as the cluster's metadata says, read from the
    ops host; a partition without a leader is left out."""

    async def leaders() -> dict[int, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="fapiao-ops")
        await admin.start()
        try:
            described = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return {
            int(partition["partition"]): broker_host(int(partition["leader"]))
            for entry in described
            for partition in entry["partitions"]
            if int(partition["leader"]) in range(1, BROKERS + 1)
        }

    return run_in_netns(network.namespace(OPS), asyncio.run, leaders())


# -- PostgreSQL ------------------------------------------------------------------------------------


def postgres_servers(network: Network, run_dir: Path, log_dir: Path) -> dict[str, LocalPostgres]:
    """The services' server and one per validator, by host name."""
    where = addresses(network)
    hosts = [SERVICES_DB_HOST, *(ledger_db_host(i) for i in range(1, LEDGER_VALIDATORS + 1))]
    return {
        host: LocalPostgres(
            run_dir / host / "data",
            POSTGRES_PORT,
            log_dir / f"{host}.log",
            host=where[host],
            launcher=network.launcher(host),
        )
        for host in hosts
    }


def allow_subnet(server: LocalPostgres, subnet: str) -> None:
    """Let the other hosts of the cluster connect (trust, as on loopback): a line in pg_hba.conf for the
    subnet, read by the running server on SIGHUP."""
    hba = server.data_dir / "pg_hba.conf"
    line = f"host all all {subnet} trust"
    if line in hba.read_text().splitlines():
        return
    with hba.open("a") as handle:
        handle.write(f"{line}\n")
    pid = server.server_pid()
    if pid is not None:
        os.kill(pid, signal.SIGHUP)


def database_of(spec: ServiceSpec, databases: Mapping[str, str]) -> str:
    """The database URL of a service: its validator organisation's server, or the services' one."""
    if spec.module == "ledger":
        return databases[ledger_db_host(int(spec.name.rsplit("-", 1)[1]))]
    return databases[SERVICES_DB_HOST]


# -- services and health ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One thing the probe checks: `kind` grpc (health service), http (GET /healthz) or tcp (accepts)."""

    name: str
    kind: str
    address: str
    port: int


def service_targets(network: Network) -> list[Target]:
    where = addresses(network)
    return [Target(s.name, s.health, where[s.name], s.port) for s in local_services()]


def infrastructure_targets(network: Network) -> list[Target]:
    where = addresses(network)
    targets = [
        Target(controller_host(i), "tcp", where[controller_host(i)], CONTROLLER_PORT) for i in range(1, CONTROLLERS + 1)
    ]
    targets += [Target(broker_host(i), "tcp", where[broker_host(i)], KAFKA_PORT) for i in range(1, BROKERS + 1)]
    targets.append(Target(SERVICES_DB_HOST, "tcp", where[SERVICES_DB_HOST], POSTGRES_PORT))
    targets += [
        Target(ledger_db_host(i), "tcp", where[ledger_db_host(i)], POSTGRES_PORT)
        for i in range(1, LEDGER_VALIDATORS + 1)
    ]
    return targets


def probe(network: Network, targets: list[Target], window_s: float = 0.0) -> dict[str, str]:
    """Health of each target seen from the ops host: SERVING, NOT_SERVING, ... or DOWN. With `window_s`,
    checks again until all are SERVING or `window_s` has passed."""
    request = json.dumps({"window_s": window_s, "targets": [t.__dict__ for t in targets]})
    done = subprocess.run(
        [*network.launcher(OPS), sys.executable, "-m", "fapiao_stack.cluster", "probe"],
        input=request,
        capture_output=True,
        text=True,
        timeout=window_s + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the health probe on the ops host failed: {done.stderr[-2000:]}")
    result: dict[str, str] = json.loads(done.stdout)
    return result


async def _check(target: Target, timeout_s: float = 1.0) -> str:
    if target.kind == "grpc":
        return await grpc_health(target.port, timeout_s, host=target.address)
    if target.kind == "http":
        return await http_health(target.port, timeout_s, host=target.address)
    return "SERVING" if port_open(target.port, target.address) else "DOWN"


async def _probe_main(targets: list[Target], window_s: float) -> dict[str, str]:
    deadline = time.monotonic() + window_s
    statuses: dict[str, str] = {}
    while True:
        for target in targets:
            if statuses.get(target.name) != "SERVING":
                statuses[target.name] = await _check(target)
        if all(s == "SERVING" for s in statuses.values()) or time.monotonic() >= deadline:
            return statuses
        await asyncio.sleep(0.5)


def _service_env(
    network: Network, run_dir: Path, bootstrap: str, databases: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """The environment of each service process (the local stack's, at the hosts' addresses)."""
    where = addresses(network)
    base = stack_environment(run_dir, bootstrap, databases[SERVICES_DB_HOST], where)
    base.update(REPLICATION_ENV)
    envs = {}
    for spec in local_services():
        env = process_environment(spec, run_dir, base, where[spec.name])
        env["DATABASE_URL"] = database_of(spec, databases)
        # One worker process per host: the machine's cores are shared by every host.
        env["FAPIAO_INTAKE_PROCESSES"] = "1"
        envs[spec.name] = env
    return envs


def _say(message: str) -> None:
    print(message, flush=True)


def _running(name: str) -> bool:
    pid_file = PID_DIR / f"{name}.pid"
    return pid_file.exists() and pid_alive(int(pid_file.read_text()))


def _wait_serving(network: Network, specs: list[ServiceSpec], timeout_s: float) -> None:
    where = addresses(network)
    targets = [Target(s.name, s.health, where[s.name], s.port) for s in specs]
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = probe(network, targets, window_s=min(15.0, max(0.0, deadline - time.monotonic())))
        for target in list(targets):
            if statuses.get(target.name) == "SERVING":
                _say(f"  {target.name:<16} SERVING on {target.address}:{target.port}")
                targets.remove(target)
        if not targets:
            return
        for target in targets:
            if not _running(target.name):
                log_file = LOG_DIR / f"{target.name}.log"
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:]) if log_file.exists() else ""
                raise RuntimeError(f"{target.name} exited during start-up; last lines of {log_file}:\n{tail}")
        if time.monotonic() >= deadline:
            names = ", ".join(t.name for t in targets)
            raise TimeoutError(f"not SERVING after {timeout_s:.0f}s: {names}; logs in {LOG_DIR}")


def _write_state(network: Network, bootstrap: str, databases: Mapping[str, str]) -> dict[str, object]:
    where = addresses(network)
    state: dict[str, object] = {
        "mode": "hosts",
        "port_offset": PORT_OFFSET,
        "network": {"prefix": network.prefix, "subnet": network.subnet, "switch": network.switch},
        "hosts": {host: {"address": address, "namespace": network.namespace(host)} for host, address in where.items()},
        "kafka_bootstrap": bootstrap,
        "database_url": databases[SERVICES_DB_HOST],
        "controllers": [
            {"name": controller_host(i), "address": f"{where[controller_host(i)]}:{CONTROLLER_PORT}"}
            for i in range(1, CONTROLLERS + 1)
        ],
        "brokers": [
            {"name": broker_host(i), "address": f"{where[broker_host(i)]}:{KAFKA_PORT}"} for i in range(1, BROKERS + 1)
        ],
        "postgres": [{"name": host, "address": f"{where[host]}:{POSTGRES_PORT}"} for host in databases],
        "services": {spec.name: f"{where[spec.name]}:{spec.port}" for spec in local_services()},
        "intake_webhook": f"{where['payment_intake']}:{INTAKE_WEBHOOK_PORT}",
        "merchant_admin": intake_admin_address(where["payment_intake"]),
        "metrics": metrics_endpoints(where),
        "gateway_url": f"http://{where['gateway']}:{GATEWAY_PORT}",
    }
    STATE_FILE.write_text(json.dumps(state, indent=2))
    return state


def read_state() -> dict[str, object] | None:
    """The recorded cluster (.run/stack.json), or None when no cluster is up."""
    if not STATE_FILE.exists():
        return None
    state: dict[str, object] = json.loads(STATE_FILE.read_text())
    return state if state.get("mode") == "hosts" else None


def _network_of(state: Mapping[str, object] | None) -> Network:
    if state is None:
        return network_from_env()
    recorded = state["network"]
    assert isinstance(recorded, dict)
    return Network(prefix=str(recorded["prefix"]), subnet=str(recorded["subnet"]))


def up(timeout_s: float = 600.0) -> dict[str, object]:
    """Create the hosts and start everything not running yet, one after the other; wait for SERVING."""
    if STATE_FILE.exists() and read_state() is None:
        raise RuntimeError("the single-host stack is running: stop it with `fapiao down` first")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    network = _network_of(read_state())
    _say(f"creating the hosts: {network.prefix}* on {network.subnet} (bridge in {network.switch}) ...")
    network.up(host_layout())
    start_kafka(kafka_nodes(network, HOSTS_DIR, LOG_DIR), PID_DIR)
    bootstrap = bootstrap_of(network)
    _say(f"creating the topics ({REPLICATION_FACTOR} replicas, min ISR {MIN_INSYNC_REPLICAS}) ...")
    create_topics(network, bootstrap)
    databases = {}
    for host, server in postgres_servers(network, HOSTS_DIR, LOG_DIR).items():
        _say(f"starting PostgreSQL on {host} ({server.host}) ...")
        server.start()  # returns at once when it runs already
        allow_subnet(server, network.subnet)
        databases[host] = server.create_database("fapiao")
    envs = _service_env(network, RUN_DIR, bootstrap, databases)
    validators = [s for s in local_services() if s.module == "ledger"]
    others = [s for s in local_services() if s.module != "ledger"]
    deadline = time.monotonic() + timeout_s
    for group in (validators, others):
        for spec in group:
            if _running(spec.name):
                continue
            _say(f"starting {spec.name} on {addresses(network)[spec.name]} ...")
            spawn(
                [*network.launcher(spec.name), *spec.argv()],
                log_file=LOG_DIR / f"{spec.name}.log",
                env=envs[spec.name],
                pid_file=PID_DIR / f"{spec.name}.pid",
            )
        _wait_serving(network, group, max(30.0, deadline - time.monotonic()))
    return _write_state(network, bootstrap, databases)


def down() -> list[str]:
    """Stop every process of the cluster (services, brokers, controllers, PostgreSQL) and delete the hosts."""
    state = read_state()
    network = _network_of(state)
    stopped = []
    for spec in reversed(local_services()):
        if stop_pid_file(PID_DIR / f"{spec.name}.pid", timeout_s=15):
            stopped.append(spec.name)
    for node in reversed(kafka_nodes(network, HOSTS_DIR, LOG_DIR)):
        name = node.data_dir.name
        if stop_pid_file(PID_DIR / f"{name}.pid", timeout_s=30):
            stopped.append(name)
    for host, server in postgres_servers(network, HOSTS_DIR, LOG_DIR).items():
        if server.stop():
            stopped.append(host)
    removed = network.down()
    if removed:
        stopped.append(f"{len(removed)} namespaces")
    if state is not None:
        STATE_FILE.unlink(missing_ok=True)
    return stopped


def process_names() -> list[str]:
    """Every process of the cluster by name (its host's name), in start order."""
    return [host for host in host_layout() if host != OPS]


def restart(name: str, timeout_s: float = 300.0) -> str:
    """Stop process `name` if it runs (a controller, broker, PostgreSQL server or service), start it
    again as `up` does and wait until it serves; return its address. Also starts one that died."""
    state = read_state()
    if state is None:
        raise ConnectionError("no multi-host cluster is running: start it with `fapiao up --hosts`")
    network = _network_of(state)
    nodes = {node.data_dir.name: node for node in kafka_nodes(network, HOSTS_DIR, LOG_DIR)}
    servers = postgres_servers(network, HOSTS_DIR, LOG_DIR)
    specs = {spec.name: spec for spec in local_services()}
    if name in nodes:
        stop_pid_file(PID_DIR / f"{name}.pid", timeout_s=30)
        start_kafka([nodes[name]], PID_DIR, timeout_s)
        return f"{nodes[name].host}:{nodes[name].listen_port}"
    if name in servers:
        servers[name].stop()
        servers[name].start(timeout_s)
        return f"{servers[name].host}:{POSTGRES_PORT}"
    if name not in specs:
        raise KeyError(f"no process {name!r} in the cluster; one of: {', '.join(process_names())}")
    stop_pid_file(PID_DIR / f"{name}.pid", timeout_s=15)
    databases = {
        host: f"postgresql://postgres@{server.host}:{POSTGRES_PORT}/fapiao" for host, server in servers.items()
    }
    env = _service_env(network, RUN_DIR, str(state["kafka_bootstrap"]), databases)[name]
    spawn([*network.launcher(name), *specs[name].argv()], log_file=LOG_DIR / f"{name}.log", env=env,
          pid_file=PID_DIR / f"{name}.pid")  # fmt: skip
    _wait_serving(network, [specs[name]], timeout_s)
    return f"{addresses(network)[name]}:{specs[name].port}"


def status() -> dict[str, dict[str, object]]:
    """Health of every process of the cluster, seen from the ops host: name -> {health, address, kind}."""
    state = read_state()
    if state is None:
        raise ConnectionError("no multi-host cluster is running: start it with `fapiao up --hosts`")
    network = _network_of(state)
    targets = [*infrastructure_targets(network), *service_targets(network)]
    kinds = {controller_host(i): "controller" for i in range(1, CONTROLLERS + 1)}
    kinds.update({broker_host(i): "broker" for i in range(1, BROKERS + 1)})
    kinds.update({host: "postgres" for host in postgres_servers(network, HOSTS_DIR, LOG_DIR)})
    health = probe(network, targets)
    return {
        t.name: {
            "health": health.get(t.name, "DOWN"),
            "address": f"{t.address}:{t.port}",
            "kind": kinds.get(t.name, "service"),
        }
        for t in targets
    }


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "probe":
        request = json.loads(sys.stdin.read())
        targets = [Target(**t) for t in request["targets"]]
        print(json.dumps(asyncio.run(_probe_main(targets, float(request["window_s"])))))
        return 0
    if command == "up":
        state = up()
        _say(f"Kafka      {state['kafka_bootstrap']}")
        _say(f"PostgreSQL {state['database_url']}")
        _say(f"logs       {LOG_DIR}")
        _say(f"operator   ip netns exec {_network_of(state).namespace(OPS)} ...")
        return 0
    if command == "down":
        stopped = down()
        _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if command == "restart":
        if len(argv) != 2:
            _say(f"usage: restart --hosts NAME (one of: {', '.join(process_names())})")
            return 2
        try:
            address = restart(argv[1])
        except KeyError as exc:
            _say(str(exc.args[0]))
            return 2
        _say(f"{argv[1]} restarted: SERVING on {address}")
        return 0
    if command == "status":
        report = status()
        for name, entry in report.items():
            _say(f"{name:<16} {entry['kind']:<11} {entry['address']:<22} {entry['health']}")
        return 0 if all(e["health"] == "SERVING" for e in report.values()) else 1
    _say(f"unknown command {command!r}; use up, down, status or restart (with --hosts)")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
