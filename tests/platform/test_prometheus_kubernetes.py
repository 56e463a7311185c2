"""deploy/prometheus/kubernetes.yml: Prometheus in the cluster that runs deploy/k8s finds every Fapiao
process's metrics port and labels it with the `job` and `process` the alert rules and the dashboard use.

Debian's Prometheus has no Kubernetes discovery, so promtool checks the configuration with the discovery
swapped for a static target, and the relabelling (Prometheus's `keep` and `replace`: anchored regular
expressions over the source labels joined by `;`) is applied here to the targets Kubernetes discovery
gives for the pods of deploy/k8s's workloads: one per container port, with the pod's labels.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fapiao_stack.prometheus import JOBS, RULES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "kubernetes.yml"
K8S = ROOT / "deploy" / "k8s"


def _label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def discovered(namespace: str = "fapiao") -> list[dict[str, str]]:
    """The targets of role `pod` for deploy/k8s's workloads: a pod per replica, a target per port."""
    targets = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document["kind"] not in ("Deployment", "StatefulSet"):
                continue
            name, spec = document["metadata"]["name"], document["spec"]
            for replica in range(spec.get("replicas", 1)):
                pod = f"{name}-{replica}" if document["kind"] == "StatefulSet" else f"{name}-7f9c6d5b8-x{replica}q2z"
                labels = {
                    f"__meta_kubernetes_pod_label_{_label_name(k)}": v
                    for k, v in spec["template"]["metadata"]["labels"].items()
                }
                for container in spec["template"]["spec"]["containers"]:
                    for port in container.get("ports", []):
                        targets.append(
                            {
                                "__address__": f"10.1.0.{len(targets) + 2}:{port['containerPort']}",
                                "job": "fapiao",
                                "__meta_kubernetes_namespace": namespace,
                                "__meta_kubernetes_pod_name": pod,
                                "__meta_kubernetes_pod_phase": "Running",
                                "__meta_kubernetes_pod_container_name": container["name"],
                                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                                **labels,
                            }
                        )
    return targets


def relabel(target: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's relabelling for the actions the configuration uses; None when the target is dropped."""
    labels = dict(target)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                labels[rule["target_label"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
        else:
            raise AssertionError(f"relabel action {action} is not modelled here")
    return {k: v for k, v in labels.items() if not k.startswith("__") or k == "__address__"}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


def test_promtool_accepts_the_configuration_with_discovery_swapped_for_a_static_target(config, tmp_path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make prometheus` installs Debian's prometheus package"
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    static = dict(job)
    del static["kubernetes_sd_configs"]
    static["static_configs"] = [{"targets": ["10.1.0.2:9100"]}]
    (tmp_path / "rules").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / RULES.name)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({**config, "scrape_configs": [static]}))
    done = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert config["rule_files"] == ["rules/fapiao.rules.yml"]


def test_every_fapiao_process_is_scraped_once_with_the_job_and_process_the_rules_use(config) -> None:
    (job,) = config["scrape_configs"]
    kept = [t for t in (relabel(target, job["relabel_configs"]) for target in discovered()) if t]
    assert all(t["__address__"].endswith(":9100") for t in kept)
    assert {t["job"] for t in kept} == set(JOBS)
    processes = [t["process"] for t in kept]
    assert len(processes) == len(set(processes))  # one target per process
    validators = sorted(t["process"] for t in kept if t["job"] == "ledger")
    assert validators == ["ledger-1", "ledger-2", "ledger-3", "ledger-4"]
    # Each Deployment's replicas are processes of their own, named by their pods.
    intake = sorted(t["process"] for t in kept if t["job"] == "payment_intake")
    assert len(intake) == 2 and all(p.startswith("payment-intake-") for p in intake)
    assert {t["namespace"] for t in kept} == {"fapiao"}


def test_the_broker_the_database_and_other_ports_are_not_scraped(config) -> None:
    (job,) = config["scrape_configs"]
    targets = discovered()
    dropped = [t for t in targets if relabel(t, job["relabel_configs"]) is None]
    assert {t["__meta_kubernetes_pod_container_port_name"] for t in dropped} >= {"grpc", "webhook"}
    assert all(
        not t["__meta_kubernetes_pod_name"].startswith(("kafka-", "postgres-"))
        for t in targets
        if relabel(t, job["relabel_configs"])
    )
    # A pod that is no longer running is not scraped.
    finished = {**next(t for t in targets if t["__meta_kubernetes_pod_container_port_name"] == "metrics")}
    finished["__meta_kubernetes_pod_phase"] = "Succeeded"
    assert relabel(finished, job["relabel_configs"]) is None
