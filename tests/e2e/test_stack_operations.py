"""Operating a running local stack: restart one process, see the servers in status, recover a PostgreSQL
killed with -9 with `fapiao up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from fapiao_stack.procs import pid_alive

from tests.e2e.conftest import FapiaoCommand

pytestmark = pytest.mark.e2e


def _status(fapiao: FapiaoCommand) -> dict[str, dict[str, object]]:
    done = fapiao("status", "--json")
    report: dict[str, dict[str, object]] = json.loads(done.stdout)
    return report


def _pid(fapiao: FapiaoCommand, name: str) -> int:
    return int((fapiao.run_dir / "pids" / f"{name}.pid").read_text())


def test_restart_one_process_and_recover_a_killed_postgres(fapiao: FapiaoCommand) -> None:
    up = fapiao("up")
    assert up.returncode == 0, up.stdout + up.stderr

    report = _status(fapiao)
    offset = int(fapiao.env["FAPIAO_PORT_OFFSET"])
    assert report["kafka"] == {
        "kind": "kafka",
        "health": "SERVING",
        "address": f"127.0.0.1:{19092 + offset}",
        "brokers_in_cluster": 1,
    }
    assert report["postgres"] == {"kind": "postgres", "health": "SERVING", "address": f"127.0.0.1:{15432 + offset}"}
    assert {name for name, entry in report.items() if entry["kind"] == "service"} >= {"ledger-2", "gateway"}
    assert {entry["health"] for entry in report.values()} == {"SERVING"}

    # Later commands find the stack's ports from its record, without FAPIAO_PORT_OFFSET in their environment.
    recorded_only = {key: value for key, value in fapiao.env.items() if key != "FAPIAO_PORT_OFFSET"}

    def without_offset(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "fapiao_cli", *args]
        return subprocess.run(command, env=recorded_only, capture_output=True, text=True, timeout=300)

    seen = json.loads(without_offset("status", "--json").stdout)
    assert {name: entry["address"] for name, entry in seen.items()} == {
        name: entry["address"] for name, entry in report.items()
    }
    assert {entry["health"] for entry in seen.values()} == {"SERVING"}, seen

    # One validator, stopped and started again with the environment `up` gave it.
    before = _pid(fapiao, "ledger-2")
    restarted = without_offset("restart", "ledger-2")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "ledger-2" in restarted.stdout and "SERVING" in restarted.stdout
    assert _pid(fapiao, "ledger-2") != before and not pid_alive(before)
    assert _status(fapiao)["ledger-2"]["health"] == "SERVING"
    assert fapiao("restart", "ledger-9").returncode == 2

    # PostgreSQL killed with -9 leaves its postmaster.pid: `fapiao up` starts it again all the same.
    data = fapiao.run_dir / "postgres"
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    assert (data / "postmaster.pid").exists()
    assert _status(fapiao)["postgres"]["health"] == "DOWN"
    again = fapiao("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting PostgreSQL" in again.stdout
    report = _status(fapiao)
    assert {entry["health"] for entry in report.values()} == {"SERVING"}, report
    assert int((data / "postmaster.pid").read_text().split()[0]) != postmaster

    # The broker, through the stack's own entry point.
    broker = _pid(fapiao, "kafka")
    kafka = subprocess.run(
        [sys.executable, "-m", "fapiao_stack", "restart", "kafka"],
        env=fapiao.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert kafka.returncode == 0, kafka.stdout + kafka.stderr
    assert _pid(fapiao, "kafka") != broker and not pid_alive(broker)
    assert _status(fapiao)["kafka"]["health"] == "SERVING"
