"""Debian's Prometheus against a running stack: the scrape configuration, a private Prometheus server, and
the checks `make test-prometheus` (the local stack) and `make deploy-test` (the compose stack) make.

Every target carries the labels Fapiao's alert rules and dashboard group by: `job` (the service:
payment_intake, invoice_minting, reimbursement, gateway, ledger) and `process` (the process, ledger-3).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fapiao_stack.config import metrics_endpoints
from fapiao_stack.paths import REPO_ROOT
from fapiao_stack.procs import free_port
from fapiao_stack.services import local_services

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules" / "fapiao.rules.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "fapiao.json"
DEFAULT_RULES = "rules/fapiao.rules.yml"
JOBS = ("payment_intake", "invoice_minting", "reimbursement", "gateway", "ledger")


@dataclass(frozen=True)
class Target:
    job: str  # the service
    process: str  # the process of that service
    address: str  # host:port of its /metrics


def _targets(recorded: Mapping[str, Mapping[str, str]]) -> list[Target]:
    return [Target(entry["job"], name, entry["address"]) for name, entry in recorded.items()]


def local_targets(host: str = "127.0.0.1") -> list[Target]:
    """The metrics ports `fapiao up` gives its services (shifted by FAPIAO_PORT_OFFSET like the stack),
    on `host`: what the stack records in its stack.json (`fapiao_stack.config.metrics_endpoints`)."""
    return _targets(metrics_endpoints({spec.name: host for spec in local_services()}))


def stack_targets(state_file: Path) -> list[Target]:
    """The targets a running stack recorded in its stack.json (`metrics`): the local stack's, the
    multi-host cluster's, or the compose stack's (written by its init step)."""
    recorded = json.loads(state_file.read_text()).get("metrics")
    if not recorded:
        raise LookupError(f"{state_file} records no metrics endpoints")
    return _targets(recorded)


def render(targets: Sequence[Target], *, interval: str = "15s", rules: str = DEFAULT_RULES, source: str = "") -> str:
    """The prometheus.yml text: one job per service, one target per process."""
    jobs: dict[str, list[Target]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    lines = [
        f"# Written by deploy/prometheus/scrape_config.py{f' for {source}' if source else ''}.",
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "rule_files:",
        f"  - {rules}",
        "scrape_configs:",
    ]
    for job in sorted(jobs, key=lambda j: JOBS.index(j) if j in JOBS else len(JOBS)):
        lines += [f"  - job_name: {job}", "    static_configs:"]
        for target in jobs[job]:
            lines += [
                f"      - targets: ['{target.address}']",
                "        labels:",
                f"          process: {target.process}",
            ]
    return "\n".join(lines) + "\n"


def rules_firing_at_once(text: str) -> str:
    """The alert rules with every `for:` duration set to 0s, so a test sees an alert fire in seconds
    (`promtool test rules` checks the durations themselves)."""
    return re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", text)


def alert_names(text: str) -> list[str]:
    return re.findall(r"- alert: (\w+)", text)


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    dashboard = json.loads(path.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


class CheckFailed(AssertionError):
    """Prometheus did not see what it must see within the deadline."""


def until(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    """Poll `check` every second until it returns something true; CheckFailed at the deadline."""
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
    raise CheckFailed(f"{what}: not reached within {timeout_s:.0f} s; last: {str(last)[:2000]}")


@dataclass(frozen=True)
class Prometheus:
    """The HTTP API of a Prometheus server."""

    base: str

    def get(self, path: str, **query: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(query)}" if query else f"{self.base}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http on loopback)
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        if answer.get("status") != "success":
            raise CheckFailed(f"{expr}: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.get("/api/v1/targets")["data"]["activeTargets"]
        return targets

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.get("/api/v1/rules")["data"]["groups"] for rule in group["rules"]]

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


@contextmanager
def prometheus_server(targets: Sequence[Target], workdir: Path, interval: str = "1s") -> Iterator[Prometheus]:
    """Debian's `prometheus` scraping `targets` every `interval`, with Fapiao's alert rules firing at once,
    on a free loopback port, its data and log under `workdir`; stopped on the way out."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError("prometheus is missing: `make prometheus` installs Debian's package")
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "fapiao.rules.yml"
    rules.write_text(rules_firing_at_once(RULES.read_text()))
    config = workdir / "prometheus.yml"
    config.write_text(render(targets, interval=interval, rules=str(rules), source="a test"))
    port = free_port()
    with (workdir / "prometheus.log").open("w") as log:
        server = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield Prometheus(f"http://127.0.0.1:{port}")
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


def check_scrapes(prometheus: Prometheus, targets: Sequence[Target], timeout_s: float = 120) -> list[str]:
    """Every target up (`up == 1`); every alert rule loaded and healthy; every dashboard query evaluates;
    the standard gRPC metrics of every gRPC service; consumer lag by topic, partition and group. Returns
    what was seen, a line each; CheckFailed otherwise."""
    seen = []

    def all_up() -> bool:
        active = prometheus.targets()
        return len(active) == len(targets) and all(t["health"] == "up" for t in active)

    until("every target up", all_up, timeout_s)
    processes = {r["metric"]["process"] for r in prometheus.query("up == 1")}
    if processes != {t.process for t in targets}:
        raise CheckFailed(f"up == 1 for {sorted(processes)}, expected {sorted(t.process for t in targets)}")
    seen.append(f"{len(targets)} targets up: {', '.join(sorted(processes))}")

    rules = prometheus.rules()
    expected = alert_names(RULES.read_text())
    if sorted(r["name"] for r in rules) != sorted(expected) or any(r["health"] == "err" for r in rules):
        raise CheckFailed(f"rules loaded: {[(r['name'], r['health'], r.get('lastError')) for r in rules]}")
    seen.append(f"{len(rules)} alert rules loaded, none in error")
    queries = dashboard_queries()
    for expr in queries:
        prometheus.query(expr)
    seen.append(f"{len(queries)} dashboard queries evaluate")

    grpc_jobs = {t.job for t in targets} - {"gateway"}
    until(
        "gRPC metrics of every gRPC service",
        lambda: {r["metric"]["job"] for r in prometheus.query("sum by (job) (grpc_server_handled_total)")} >= grpc_jobs,
        60,
    )
    seen.append(f"grpc_server_handled_total from {', '.join(sorted(grpc_jobs))}")
    lagging = {"invoice_minting", "reimbursement", "ledger"} & {t.job for t in targets}
    lag = until(
        "consumer lag of every consumer",
        lambda: (
            (series := prometheus.query("fapiao_consumer_lag"))
            and {r["metric"]["job"] for r in series} >= lagging
            and series
        ),
        60,
    )
    if not {"topic", "partition", "group"} <= set(lag[0]["metric"]):
        raise CheckFailed(f"fapiao_consumer_lag without topic, partition and group labels: {lag[0]['metric']}")
    seen.append(f"fapiao_consumer_lag from {', '.join(sorted(lagging))} ({len(lag)} series)")
    return seen


def check_validator_down_alert(
    prometheus: Prometheus, validator: str, stop: Callable[[], None], timeout_s: float = 60
) -> str:
    """Stop `validator` with `stop`; its target goes down and FapiaoValidatorDown fires for it alone."""
    stop()
    until(f"{validator}'s target down", lambda: prometheus.query(f'up{{process="{validator}"}} == 0'), timeout_s)
    alerts = until("FapiaoValidatorDown firing", lambda: prometheus.firing("FapiaoValidatorDown"), timeout_s)
    fired = sorted(a["labels"]["process"] for a in alerts)
    if fired != [validator]:
        raise CheckFailed(f"FapiaoValidatorDown fired for {fired}, expected [{validator!r}]")
    return f"{validator} stopped: FapiaoValidatorDown firing for it alone"
