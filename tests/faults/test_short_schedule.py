"""A short fault schedule against a real stack: every kind of process fault (kill -9 of a service, a
validator, the broker, PostgreSQL and the ledger's partition leader; a pause) at least once, and the
network kinds when the multi-host cluster runs; then the checker must find nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fapiao_faults.nemesis import NETWORK_KINDS, PROCESS_KINDS

from tests.support.ports import free_port_offset

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_a_short_schedule_loses_nothing(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "FAPIAO_RUN_DIR": str(tmp_path / "run"),
            "FAPIAO_PORT_OFFSET": str(free_port_offset()),
            "FAPIAO_CLUSTER_PREFIX": f"fapiao-f{os.getpid() % 100000}-",
            "PYTHONUNBUFFERED": "1",
        }
    )
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "fapiao_faults", "--seed", "11", "--duration", "80", "--faults", "6",
            "--rate", "1", "--settle", "120", "--out", str(out)]  # fmt: skip
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=840)
    finally:
        subprocess.run([sys.executable, "-m", "fapiao_stack", "down"], env=env, capture_output=True, timeout=120)
    report = done.stdout[-6000:] + done.stderr[-3000:]
    assert (out / "summary.json").exists(), report
    summary = json.loads((out / "summary.json").read_text())
    injected = set(summary["faults_by_kind"])
    assert injected >= set(PROCESS_KINDS), report
    if summary["system"] == "multi-host":
        assert injected >= set(NETWORK_KINDS), report
    assert summary["checks"] == dict.fromkeys(summary["checks"], 0), report
    assert done.returncode == 0, report
    by_kind = summary["operations_by_kind"]
    for kind in ("pay_webhook", "pay_grpc", "claim", "lock", "close"):
        assert by_kind[kind]["ok"] > 0, (kind, report)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == summary["operations"]
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
