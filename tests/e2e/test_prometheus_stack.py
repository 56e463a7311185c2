"""Debian's Prometheus against a running local stack: every target is scraped (`up == 1`), the alert rules
load, every dashboard query evaluates, the services export the standard gRPC metrics and their consumer
lag, and stopping a validator fires FapiaoValidatorDown.

Starts the whole local stack and Prometheus, which takes minutes: it runs with FAPIAO_TEST_PROMETHEUS=1
(`make test-prometheus`). The rules are loaded with their `for:` durations set to 0s so the alert fires
within seconds; `promtool test rules` checks the durations themselves (tests/platform/test_prometheus_rules.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fapiao_stack.procs import free_port, pid_alive

from tests.e2e.conftest import FapiaoCommand
from tests.platform.test_prometheus_rules import DASHBOARD, PROMETHEUS, RULES, dashboard_queries

pytestmark = pytest.mark.e2e

ENABLED = os.environ.get("FAPIAO_TEST_PROMETHEUS") == "1"
JOBS = {"payment_intake", "invoice_minting", "reimbursement", "gateway", "ledger"}


def _get(base: str, path: str, **query: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http on loopback)
        return json.loads(response.read())


def _until(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # Prometheus still starting
            last = exc
        else:
            if last:
                return last
        time.sleep(1)
    raise AssertionError(f"{what} not reached within {timeout_s}s; last: {last}")


@pytest.fixture
def prometheus(fapiao: FapiaoCommand, tmp_path: Path) -> Iterator[str]:
    """The private stack up, and Prometheus scraping it every second; yields Prometheus's base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make prometheus` installs Debian's package"
    up = fapiao("up")
    assert up.returncode == 0, up.stdout + up.stderr
    rules = tmp_path / "fapiao.rules.yml"
    rules.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", RULES.read_text()))
    config = tmp_path / "prometheus.yml"
    generated = subprocess.run(
        [sys.executable, str(PROMETHEUS / "scrape_config.py"), "--interval", "1s", "--rules", str(rules)],
        env=fapiao.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config.write_text(generated.stdout)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


def _targets(base: str) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = _get(base, "/api/v1/targets")["data"]["activeTargets"]
    return targets


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(base, "/api/v1/query", query=expr)
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.mark.skipif(not ENABLED, reason="starts the whole stack and Prometheus: FAPIAO_TEST_PROMETHEUS=1")
@pytest.mark.timeout(900)
def test_prometheus_scrapes_every_service_and_a_stopped_validator_fires_its_alert(
    prometheus: str, fapiao: FapiaoCommand
) -> None:
    # Every process of the stack with a metrics port is a target, and every target is up.
    def all_up() -> bool:
        targets = _targets(prometheus)
        return len(targets) == 8 and all(t["health"] == "up" for t in targets)

    _until("every target up", all_up, 120)
    assert {t["labels"]["job"] for t in _targets(prometheus)} == JOBS
    assert {r["metric"]["process"] for r in _query(prometheus, "up == 1")} == {
        "payment_intake",
        "invoice_minting",
        "reimbursement",
        "gateway",
        "ledger-1",
        "ledger-2",
        "ledger-3",
        "ledger-4",
    }

    # The rules load, and every dashboard query is one Prometheus evaluates.
    groups = _get(prometheus, "/api/v1/rules")["data"]["groups"]
    assert sum(len(g["rules"]) for g in groups) == len(re.findall(r"- alert: ", RULES.read_text()))
    assert all(rule["health"] != "err" for g in groups for rule in g["rules"]), groups
    for expr in dashboard_queries():
        _query(prometheus, expr)
    assert DASHBOARD.is_file()

    # The standard gRPC metrics of every gRPC service (the stack's health checks are calls too), and the
    # consumer lag of invoice_minting's and reimbursement's consumers, by topic, partition and group.
    handled = _until(
        "gRPC metrics of every gRPC service",
        lambda: (
            {r["metric"]["job"] for r in _query(prometheus, "sum by (job) (grpc_server_handled_total)")}
            >= JOBS - {"gateway"}
        ),
        60,
    )
    assert handled
    lag = _until(
        "consumer lag of invoice_minting and reimbursement",
        lambda: (
            {r["metric"]["job"] for r in _query(prometheus, "fapiao_consumer_lag")}
            >= {"invoice_minting", "reimbursement"}
        ),
        60,
    )
    assert lag
    assert {"topic", "partition", "group"} <= set(_query(prometheus, "fapiao_consumer_lag")[0]["metric"])

    # A stopped validator: its target goes down and FapiaoValidatorDown fires for it, for it alone.
    pid = int((fapiao.run_dir / "pids" / "ledger-4.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    _until("ledger-4 stopped", lambda: not pid_alive(pid), 60)

    def firing() -> list[dict[str, Any]]:
        alerts = _get(prometheus, "/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "FapiaoValidatorDown" and a["state"] == "firing"]

    alerts = _until("FapiaoValidatorDown firing", firing, 60)
    assert [a["labels"]["process"] for a in alerts] == ["ledger-4"]
