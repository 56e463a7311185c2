"""A real Apache Kafka broker (KRaft) from the official Maven Central artifacts.

Maven copies org.apache.kafka:kafka_2.13 and its runtime dependencies into .cache/kafka/libs
(deploy/local/kafka/pom.xml pins the version); the broker is formatted and run with `java`.

A broker runs alone (the local stack, the tests: one node that is broker and controller, internal
topics with one replica) or as one member of a cluster (`fapiao up --hosts`, fapiao_stack.cluster:
three brokers and a quorum of three controllers, one cluster id, internal topics with three replicas
and two in sync). Its log4j 2 output (INFO for the broker's own lifecycle: start, controller and
leadership changes, shutdown) goes to `log_file`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fapiao_stack.hosts import netns_launcher, port_open_in
from fapiao_stack.paths import KAFKA_LIBS, KAFKA_POM_DIR
from fapiao_stack.procs import port_open, spawn, stop_pid

# The broker's lifecycle at INFO; per-request, per-client and per-segment chatter at WARN.
# The broker's logging (also the Kafka image's): lifecycle at INFO, per-request chatter at WARN.
LOG4J2_FILE = KAFKA_POM_DIR / "log4j2.xml"


def ensure_kafka_jars() -> Path:
    """Resolve the broker jars with Maven if they are not cached yet; return the libs directory."""
    stamp = KAFKA_LIBS / ".stamp"
    if not stamp.exists():
        if shutil.which("mvn") is None:
            raise RuntimeError("Maven (mvn) is required to fetch the Kafka broker from Maven Central")
        subprocess.run(["mvn", "--batch-mode", "--quiet", "package"], cwd=KAFKA_POM_DIR, check=True)
        stamp.touch()
    return KAFKA_LIBS


def new_cluster_id() -> str:
    """A KRaft cluster id (22 characters); every member of one cluster is formatted with the same."""
    return uuid.uuid4().hex[:22]


@dataclass
class KafkaBroker:
    """One KRaft node (`roles`: broker and controller, or either alone). `start()` formats the data
    dir on first use.

    Alone by default: broker and controller on `host` (loopback), its own single-voter quorum, internal
    topics with one replica. In a cluster: `node_id`, the `voters` of the controller quorum
    ("ID@HOST:PORT" of every controller), the `cluster_id` shared by all, `replication` 3 (internal
    topics with 3 replicas and min ISR 2, the brokers' default min ISR 2), and `netns` to run it inside
    that network namespace (fapiao_stack.hosts).
    """

    data_dir: Path
    port: int
    controller_port: int
    log_file: Path
    heap: str = "768m"
    host: str = "127.0.0.1"
    node_id: int = 1
    voters: Sequence[str] = ()
    cluster_id: str = ""
    replication: int = 1
    roles: str = "broker,controller"
    netns: str | None = None
    # Extra JVM options and server properties (a cluster of small nodes sharing a few cores).
    jvm_options: Sequence[str] = ()
    overrides: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def voter(self) -> str:
        """This node's entry in `controller.quorum.voters` (when it is a controller)."""
        return f"{self.node_id}@{self.host}:{self.controller_port}"

    @property
    def listen_port(self) -> int:
        """The port that answers once the node is up: the client listener, or a controller's own."""
        return self.controller_port if self.roles == "controller" else self.port

    def properties(self) -> dict[str, str]:
        """The node's server.properties."""
        replicas = str(self.replication)
        min_isr = str(min(2, self.replication))
        client = f"PLAINTEXT://{self.host}:{self.port}"
        controller = f"CONTROLLER://{self.host}:{self.controller_port}"
        listeners = {"broker,controller": f"{client},{controller}", "broker": client, "controller": controller}
        if self.roles not in listeners:
            raise ValueError(f"roles must be one of {sorted(listeners)}, got {self.roles!r}")
        properties = {
            "process.roles": self.roles,
            "node.id": str(self.node_id),
            "controller.quorum.voters": ",".join(self.voters) if self.voters else self.voter,
            "listeners": listeners[self.roles],
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
        }
        if self.roles == "controller":
            properties.update(self.overrides)
            return properties
        properties.update(
            {
                "advertised.listeners": client,
                "inter.broker.listener.name": "PLAINTEXT",
                "num.partitions": "1",
                "auto.create.topics.enable": "false",
                "default.replication.factor": replicas,
                "min.insync.replicas": min_isr,
                "unclean.leader.election.enable": "false",
                "offsets.topic.replication.factor": replicas,
                "offsets.topic.num.partitions": "4",
                "transaction.state.log.replication.factor": replicas,
                "transaction.state.log.min.isr": min_isr,
                "transaction.state.log.num.partitions": "4",
                "group.initial.rebalance.delay.ms": "0",
                "log.retention.hours": "168",
            }
        )
        if self.replication > 1:
            # A follower that stops fetching leaves the ISR after 10 s (default 30 s): acks=all writes
            # wait that long for a lost follower before going on with the others.
            properties["replica.lag.time.max.ms"] = "10000"
        properties.update(self.overrides)
        return properties

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in self.properties().items()))
        return config

    def _java(self) -> list[str]:
        libs = ensure_kafka_jars()
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Xms{min(256, _megabytes(self.heap))}m",
            "-XX:+UseG1GC",
            *self.jvm_options,
            f"-Dlog4j2.configurationFile={LOG4J2_FILE}",
            "-cp",
            f"{libs}/*",
        ]

    def listening(self) -> bool:
        """True when the client listener accepts connections (probed from inside `netns` when set)."""
        if self.netns is not None:
            return port_open_in(self.netns, self.host, self.listen_port)
        return port_open(self.listen_port, self.host)

    def start(self, timeout_s: float = 60.0) -> None:
        """Launch the broker and wait until it listens (a cluster member: `launch` every member, then
        `wait_listening` on each, since a quorum of controllers must run before any broker listens)."""
        self.launch()
        self.wait_listening(timeout_s)

    def launch(self) -> None:
        """Format the storage on first use and start the process (without waiting)."""
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            formatted = subprocess.run(
                [*self._java(), "kafka.tools.StorageTool", "format", "-t", self.cluster_id or new_cluster_id(),
                 "-c", str(config)],
                capture_output=True,
                text=True,
            )  # fmt: skip
            if formatted.returncode != 0:
                raise RuntimeError(f"formatting Kafka storage failed: {formatted.stdout}{formatted.stderr}"[-2000:])
        launcher = netns_launcher(self.netns) if self.netns is not None else []
        self.proc = spawn([*launcher, *self._java(), "kafka.Kafka", str(config)], log_file=self.log_file)

    def wait_listening(self, timeout_s: float = 60.0) -> None:
        """Wait until the client listener accepts connections; fail early if the process exits."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while not self.listening():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Kafka {self.roles} exited with code {self.proc.returncode} before listening on"
                    f" {self.host}:{self.listen_port}; see {self.log_file}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Kafka {self.roles} did not listen on {self.host}:{self.listen_port} within {timeout_s}s"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout_s=30)
            self.proc.wait(timeout=5)
        self.proc = None


def _megabytes(heap: str) -> int:
    """A JVM size ("768m", "1g") in MiB."""
    unit = heap[-1].lower()
    number = int(heap[:-1]) if unit in "kmg" else int(heap)
    return {"k": number // 1024, "m": number, "g": number * 1024}.get(unit, number // (1 << 20))
