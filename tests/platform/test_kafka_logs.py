"""The broker writes its log: a start and a restart leave their lines (log4j 2 bound to Kafka's SLF4J)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fapiao_stack.kafka import KafkaBroker
from fapiao_stack.procs import free_port

pytestmark = pytest.mark.integration


def test_a_broker_start_and_restart_leave_lines_in_its_log(tmp_path: Path) -> None:
    log_file = tmp_path / "kafka.log"
    broker = KafkaBroker(tmp_path / "data", free_port(), free_port(), log_file, heap="384m")
    broker.start(timeout_s=180)
    broker.stop()
    first = log_file.read_text()
    assert first.count("Kafka Server started") == 1
    assert "shut down completed" in first

    broker.start(timeout_s=180)
    broker.stop()
    both = log_file.read_text()
    assert both.startswith(first), "a restart appends to the log"
    assert both.count("Kafka Server started") == 2
    assert "SLF4J: Defaulting to no-operation" not in both
