"""Debian's Prometheus against a running local stack: every target is scraped (`up == 1`), the alert rules
load, every dashboard query evaluates, the services export the standard gRPC metrics and their consumer
lag, and stopping a validator fires FapiaoValidatorDown.

Starts the whole local stack and Prometheus, which takes minutes: it runs with FAPIAO_TEST_PROMETHEUS=1
(`make test-prometheus`). The checks are fapiao_stack.prometheus's, the ones `make deploy-test` makes
against the compose stack. The rules are loaded with their `for:` durations set to 0s so the alert fires
within seconds; `promtool test rules` checks the durations themselves (tests/platform/test_prometheus_rules.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fapiao_stack.procs import pid_alive
from fapiao_stack.prometheus import (
    JOBS,
    check_scrapes,
    check_validator_down_alert,
    prometheus_server,
    stack_targets,
    until,
)

from tests.e2e.conftest import FapiaoCommand

pytestmark = pytest.mark.e2e

ENABLED = os.environ.get("FAPIAO_TEST_PROMETHEUS") == "1"


@pytest.mark.skipif(not ENABLED, reason="starts the whole stack and Prometheus: FAPIAO_TEST_PROMETHEUS=1")
@pytest.mark.timeout(900)
def test_prometheus_scrapes_every_service_and_a_stopped_validator_fires_its_alert(
    fapiao: FapiaoCommand, tmp_path: Path
) -> None:
    up = fapiao("up")
    assert up.returncode == 0, up.stdout + up.stderr
    targets = stack_targets(fapiao.run_dir / "stack.json")
    assert {t.job for t in targets} == set(JOBS)
    assert len(targets) == 8

    with prometheus_server(targets, tmp_path / "prometheus") as prometheus:
        for line in check_scrapes(prometheus, targets):
            print(line)

        pid = int((fapiao.run_dir / "pids" / "ledger-4.pid").read_text())

        def stop() -> None:
            os.kill(pid, signal.SIGTERM)
            until("ledger-4 stopped", lambda: not pid_alive(pid), 60)

        print(check_validator_down_alert(prometheus, "ledger-4", stop))
