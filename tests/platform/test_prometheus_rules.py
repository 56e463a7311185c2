"""deploy/prometheus and deploy/grafana: the scrape config is the generator's, promtool accepts the config and
the alert rules and passes their unit tests, and every metric the rules and the dashboard query is one a
service exports."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fapiao_stack.prometheus import RULES, dashboard_queries

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_TESTS = PROMETHEUS / "rules" / "fapiao.rules.test.yml"
METRIC_NAME = re.compile(r"\b(?:fapiao|grpc_server)_[a-z0-9_]+\b")
METRIC_KINDS = {"Counter", "Gauge", "Histogram", "Summary"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make prometheus` installs Debian's prometheus package"
    return found


def _promtool(*args: str) -> str:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def exported_metrics() -> set[str]:
    """Every series name the services' metric definitions export (prometheus_client's naming: a counter
    ends in _total, a histogram has _bucket, _count and _sum)."""
    names: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            kind = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            if kind not in METRIC_KINDS or not isinstance(first, ast.Constant) or not isinstance(first.value, str):
                continue
            name = first.value
            if kind == "Counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            elif kind in ("Histogram", "Summary"):
                names.update({name, f"{name}_count", f"{name}_sum", f"{name}_bucket"})
            else:
                names.add(name)
    return names


def test_the_scrape_config_is_the_generators_for_the_local_stack() -> None:
    env = {**os.environ, "FAPIAO_PORT_OFFSET": "0"}
    done = subprocess.run(
        [sys.executable, str(PROMETHEUS / "scrape_config.py")], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (PROMETHEUS / "prometheus.yml").read_text()
    for job in ("payment_intake", "invoice_minting", "reimbursement", "gateway", "ledger"):
        assert f"job_name: {job}\n" in done.stdout
    assert done.stdout.count("process: ledger-") == 4


def test_promtool_accepts_the_config_and_the_rules() -> None:
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 12 rules found" in _promtool("check", "rules", str(RULES))


def test_the_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in _promtool("test", "rules", str(RULE_TESTS))


def test_every_alert_the_operations_kit_promises_has_a_rule() -> None:
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    assert alerts >= {
        "FapiaoValidatorDown",
        "FapiaoChainDivergence",
        "FapiaoEquivocation",
        "FapiaoValidatorBehind",
        "FapiaoNoFinalBlock",
        "FapiaoConsumerLag",
        "FapiaoOutboxBacklog",
        "FapiaoGrpcErrors",
        "FapiaoHttpErrors",
    }
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == alerts  # every rule has a unit test


def test_every_metric_in_the_rules_and_the_dashboard_is_exported_by_a_service() -> None:
    exported = exported_metrics()
    assert {"grpc_server_handled_total", "fapiao_consumer_lag", "fapiao_ledger_height"} <= exported
    queried = set(METRIC_NAME.findall(RULES.read_text()))
    queries = dashboard_queries()
    assert len(queries) >= 20
    for query in queries:
        queried.update(METRIC_NAME.findall(query))
    assert queried - exported == set()
    # The scan finds a name that no service exports.
    assert METRIC_NAME.findall("rate(fapiao_no_such_metric_total[5m])")[0] not in exported


def test_a_scrape_config_for_a_stack_lists_the_metrics_endpoints_its_stack_file_records(tmp_path) -> None:
    state = {
        "metrics": {
            "payment_intake": {"job": "payment_intake", "address": "10.0.0.2:9101"},
            "ledger-2": {"job": "ledger", "address": "10.0.0.4:9112"},
            "ledger-1": {"job": "ledger", "address": "10.0.0.3:9111"},
        }
    }
    (tmp_path / "stack.json").write_text(json.dumps(state))
    done = subprocess.run(
        [sys.executable, str(PROMETHEUS / "scrape_config.py"), "--run-dir", str(tmp_path), "--interval", "5s"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert list(jobs) == ["payment_intake", "ledger"]
    assert jobs["ledger"] == [
        {"targets": ["10.0.0.4:9112"], "labels": {"process": "ledger-2"}},
        {"targets": ["10.0.0.3:9111"], "labels": {"process": "ledger-1"}},
    ]
    (tmp_path / "stack.json").write_text("{}")
    refused = subprocess.run(
        [sys.executable, str(PROMETHEUS / "scrape_config.py"), "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "records no metrics endpoints" in refused.stderr
