"""`fapiao status` lists every broker and PostgreSQL server the stack recorded, answering or not, and a
pid file whose pid now belongs to another process is not the stack's process."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from fapiao_stack import stack
from fapiao_stack.procs import (
    free_port,
    pid_alive,
    pid_file_process,
    spawn,
    stop_pid,
    stop_pid_file,
)
from fapiao_stack.services import KAFKA_PORT, POSTGRES_PORT

pytestmark = pytest.mark.integration


async def test_status_lists_the_recorded_brokers_and_postgres_servers(
    kafka_bootstrap: str, postgres_admin_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_broker, dead_postgres = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    state = {
        "brokers": [{"name": "kafka-1", "address": kafka_bootstrap}, {"name": "kafka-2", "address": dead_broker}],
        "postgres": [
            {"name": "db-1", "address": "the services' server", "url": postgres_admin_url},
            {"name": "db-2", "address": dead_postgres},
        ],
    }
    state_file = tmp_path / "stack.json"
    state_file.write_text(json.dumps(state))
    monkeypatch.setattr(stack, "STATE_FILE", state_file)

    report = await stack.detailed_status()
    assert list(report)[:4] == ["kafka-1", "kafka-2", "db-1", "db-2"]
    assert report["kafka-1"] == {
        "kind": "kafka",
        "health": "SERVING",
        "address": kafka_bootstrap,
        "brokers_in_cluster": 1,
    }
    assert report["kafka-2"] == {"kind": "kafka", "health": "DOWN", "address": dead_broker}
    assert report["db-1"] == {"kind": "postgres", "health": "SERVING", "address": "the services' server"}
    assert report["db-2"] == {"kind": "postgres", "health": "DOWN", "address": dead_postgres}
    assert {entry["kind"] for name, entry in report.items() if name.startswith("ledger-")} == {"service"}
    simple = await stack.status()
    assert (simple["kafka-1"], simple["kafka-2"], simple["db-1"], simple["db-2"]) == (
        "SERVING",
        "DOWN",
        "SERVING",
        "DOWN",
    )


async def test_without_a_recorded_stack_the_local_servers_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "STATE_FILE", tmp_path / "absent.json")
    report = await stack.detailed_status()
    assert (report["kafka"]["kind"], report["postgres"]["kind"]) == ("kafka", "postgres")
    # The local stack's own broker and server, at the ports it runs them on.
    assert report["kafka"]["address"] == f"127.0.0.1:{KAFKA_PORT}"
    assert report["postgres"]["address"] == f"127.0.0.1:{POSTGRES_PORT}"


def test_a_pid_reused_by_another_process_is_not_the_stacks(tmp_path: Path) -> None:
    other = spawn([sys.executable, "-c", "import time; time.sleep(120)"], log_file=tmp_path / "other.log")
    try:
        pid_file = tmp_path / "kafka.pid"
        pid_file.write_text(str(other.pid))
        assert pid_file_process(pid_file, "-c") == other.pid
        assert pid_file_process(pid_file, "kafka.Kafka") is None
        assert stop_pid_file(pid_file, timeout_s=1, marker="kafka.Kafka") is False
        assert pid_alive(other.pid) and not pid_file.exists()
        pid_file.write_text(str(other.pid))
        assert stop_pid_file(pid_file, timeout_s=5, marker="-c") is True
        other.wait(timeout=10)
        assert not pid_alive(other.pid)
    finally:
        if other.poll() is None:
            stop_pid(other.pid, timeout_s=1, sig=signal.SIGKILL)
            other.wait()
    pid_file.write_text(str(os.getpid() + 10_000_000))  # beyond any pid
    assert pid_file_process(pid_file, "-c") is None
