"""A real Apache Kafka broker (KRaft, single node) from the official Maven Central artifacts.

Maven copies org.apache.kafka:kafka_2.13 and its runtime dependencies into .cache/kafka/libs
(deploy/local/kafka/pom.xml pins the version); the broker is formatted and run with `java`.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from fapiao_stack.paths import KAFKA_LIBS, KAFKA_POM_DIR
from fapiao_stack.procs import spawn, stop_pid, wait_for_port

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="out" target="SYSTEM_OUT"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers>
    <Logger name="kafka" level="WARN"/><Logger name="org.apache.kafka" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""


def ensure_kafka_jars() -> Path:
    """Resolve the broker jars with Maven if they are not cached yet; return the libs directory."""
    stamp = KAFKA_LIBS / ".stamp"
    if not stamp.exists():
        if shutil.which("mvn") is None:
            raise RuntimeError("Maven (mvn) is required to fetch the Kafka broker from Maven Central")
        subprocess.run(["mvn", "--batch-mode", "--quiet", "package"], cwd=KAFKA_POM_DIR, check=True)
        stamp.touch()
    return KAFKA_LIBS


@dataclass
class KafkaBroker:
    """One KRaft broker+controller on loopback. `start()` formats the data dir on first use."""

    data_dir: Path
    port: int
    controller_port: int
    log_file: Path
    heap: str = "768m"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data_dir / 'logs'}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2)
        return config

    def _java(self) -> list[str]:
        libs = ensure_kafka_jars()
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            "-cp",
            f"{libs}/*",
        ]

    def start(self, timeout_s: float = 60.0) -> None:
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = uuid.uuid4().hex[:22]
            formatted = subprocess.run(
                [*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)],
                capture_output=True,
                text=True,
            )
            if formatted.returncode != 0:
                raise RuntimeError(f"formatting Kafka storage failed: {formatted.stdout}{formatted.stderr}"[-2000:])
        self.proc = spawn([*self._java(), "kafka.Kafka", str(config)], log_file=self.log_file)
        wait_for_port(self.port, timeout_s, self.proc, "Kafka broker")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, timeout_s=30)
            self.proc.wait(timeout=5)
        self.proc = None
