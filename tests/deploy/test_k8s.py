"""The Kubernetes manifests: schema-valid, one Secret per validator, the keys each service needs,
DATABASE_URL, health probes on the ports the services listen on, resource requests, RF 3 / min ISR 2; and
the Secrets make_secrets.py writes, and what `make deploy-test` changes to play them with podman."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import CONTAINERS, K8S, load_script

pytestmark = pytest.mark.unit

make_secrets = load_script(K8S / "make_secrets.py")
deploy_test = load_script(CONTAINERS / "deploy_test.py")
MANIFESTS = sorted(K8S.glob("*.yaml"))
KUBERNETES = "1.37.0"


def documents(*paths: Path) -> list[dict[str, Any]]:
    return [d for path in paths for d in yaml.safe_load_all(path.read_text()) if d]


def workloads() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents(*MANIFESTS) if d["kind"] in ("Deployment", "StatefulSet")}


def container_of(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def secrets_read(workload: dict[str, Any]) -> set[str]:
    pod = workload["spec"]["template"]["spec"]
    names = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    names |= {s["secretRef"]["name"] for s in container_of(workload).get("envFrom", []) if "secretRef" in s}
    for entry in container_of(workload).get("env", []):
        if "secretKeyRef" in entry.get("valueFrom", {}):
            names.add(entry["valueFrom"]["secretKeyRef"]["name"])
    return names


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return make_secrets.objects(tmp_path_factory.mktemp("k8s"), "postgres:5432", "default")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_schema_validation(path: Path) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_generated_secrets_pass_schema_validation(generated) -> None:
    for document in yaml.safe_load_all(make_secrets.render(generated)):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_a_manifest_with_a_wrong_field_is_refused() -> None:
    broken = documents(K8S / "services.yaml")[1]
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "fifty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_each_validator_is_one_replica_mounting_its_own_secret() -> None:
    validators = {name: w for name, w in workloads().items() if name.startswith("ledger-")}
    assert sorted(validators) == ["ledger-1", "ledger-2", "ledger-3", "ledger-4"]
    seen = set()
    for name, workload in validators.items():
        index = name.rsplit("-", 1)[1]
        assert workload["kind"] == "StatefulSet" and workload["spec"]["replicas"] == 1
        env = env_of(container_of(workload))
        assert env["FAPIAO_VALIDATOR_ID"] == f"validator-{index}"
        assert env["FAPIAO_DB_SCHEMA"] == f"ledger_{index}"
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        assert [v["secret"]["secretName"] for v in volumes] == [f"fapiao-validator-{index}"]
        mount = container_of(workload)["volumeMounts"][0]["mountPath"]
        assert env["FAPIAO_LEDGER_KEY_FILE"] == f"{mount}/validator.pem"
        seen.add(volumes[0]["secret"]["secretName"])
    assert len(seen) == 4


def test_each_service_reads_the_keys_it_needs_and_only_those() -> None:
    expected = {
        "payment-intake": {"fapiao-database", "fapiao-payment-intake", "fapiao-intake-admin-tls"},
        "invoice-minting": {"fapiao-database", "fapiao-invoice-minting", "fapiao-authority"},
        "reimbursement": {"fapiao-database", "fapiao-authority", "fapiao-reimbursement-tls"},
        "gateway": {"fapiao-gateway"},
        "postgres": {"fapiao-postgres"},
        "kafka": set(),
        **{f"ledger-{i}": {"fapiao-database", f"fapiao-validator-{i}"} for i in range(1, 5)},
    }
    assert {name: secrets_read(w) for name, w in workloads().items()} == expected


def test_every_file_a_service_is_told_to_read_is_in_a_mounted_volume() -> None:
    for name, workload in workloads().items():
        container = container_of(workload)
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for variable, value in env_of(container).items():
            if variable.endswith("_FILE"):
                assert any(value.startswith(f"{m}/") for m in mounts), (name, variable)


def test_every_secret_and_configmap_read_is_written_by_make_secrets_or_the_manifests(generated) -> None:
    written = {(d["kind"], d["metadata"]["name"]) for d in [*generated, *documents(*MANIFESTS)]}
    for name, workload in workloads().items():
        for secret in secrets_read(workload):
            assert ("Secret", secret) in written, (name, secret)
        for source in container_of(workload).get("envFrom", []):
            if "configMapRef" in source:
                assert ("ConfigMap", source["configMapRef"]["name"]) in written
    per_validator = [d for d in generated if d["metadata"]["name"].startswith("fapiao-validator-")]
    assert len({d["stringData"]["validator.pem"] for d in per_validator}) == 4


def test_probes_ask_the_port_each_service_listens_on_and_requests_are_set() -> None:
    for name, workload in workloads().items():
        container = container_of(workload)
        env = env_of(container)
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        probe = container["readinessProbe"]
        if "FAPIAO_GRPC_PORT" in env:
            assert probe["grpc"]["port"] == int(env["FAPIAO_GRPC_PORT"]), name
            assert container["livenessProbe"]["grpc"]["port"] == int(env["FAPIAO_GRPC_PORT"]), name
        elif "FAPIAO_HTTP_PORT" in env:
            assert probe["httpGet"] == {"path": "/healthz", "port": int(env["FAPIAO_HTTP_PORT"])}, name


def test_topics_are_replicated_three_times_with_two_in_sync() -> None:
    config = next(d for d in documents(K8S / "config.yaml") if d["metadata"]["name"] == "fapiao-config")
    assert config["data"]["FAPIAO_KAFKA_REPLICATION_FACTOR"] == "3"
    assert config["data"]["FAPIAO_KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    kafka = workloads()["kafka"]
    assert kafka["spec"]["replicas"] == 3
    assert env_of(container_of(kafka))["KAFKA_REPLICATION"] == "3"


def test_database_url_names_the_postgres_service_and_the_password_it_is_given(generated) -> None:
    by_name = {d["metadata"]["name"]: d for d in generated}
    password = by_name["fapiao-postgres"]["stringData"]["POSTGRES_PASSWORD"]
    url = by_name["fapiao-database"]["stringData"]["DATABASE_URL"]
    assert url == f"postgresql://fapiao:{password}@postgres:5432/fapiao"


def test_played_with_podman_each_workload_keeps_its_probes_on_the_ports_it_is_given(tmp_path) -> None:
    compose_init = load_script(CONTAINERS / "compose_init.py")
    compose_init.generate(tmp_path)
    manifests = documents(K8S / "config.yaml", K8S / "ledger.yaml", K8S / "services.yaml")
    played, _ = deploy_test.playable(tmp_path, manifests)
    assert not [d for d in played if d["kind"] in ("Service", "StatefulSet")]
    ports = set()
    for workload in (d for d in played if d["kind"] == "Deployment"):
        assert workload["spec"]["replicas"] == 1
        assert workload["spec"]["template"]["spec"]["hostNetwork"] is True
        container = container_of(workload)
        env = env_of(container)
        local = deploy_test.read_env_file(
            tmp_path / "env" / f"{deploy_test.compose_name(workload['metadata']['name'])}.env"
        )
        for variable in deploy_test.LOCAL_PORT_VARIABLES:
            assert env.get(variable) == local.get(variable), (workload["metadata"]["name"], variable)
        probe = container["readinessProbe"]
        port = probe["grpc"]["port"] if "grpc" in probe else probe["httpGet"]["port"]
        assert port == int(env.get("FAPIAO_GRPC_PORT") or env["FAPIAO_HTTP_PORT"])
        ports.add(port)
        kubernetes_validate.validate(workload, KUBERNETES, strict=True)
    assert len(ports) == 8


def test_every_service_selects_a_workload_and_forwards_to_ports_it_declares() -> None:
    declared = {}
    for workload in workloads().values():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = {p["containerPort"] for p in container_of(workload).get("ports", [])}
        declared[labels["app"]] = ports
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in (d for d in documents(*MANIFESTS) if d["kind"] == "Service"):
        app = service["spec"]["selector"]["app"]
        assert app in declared, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in declared[app], (service["metadata"]["name"], port)


def test_each_mutual_tls_port_gets_a_server_certificate_under_its_service_names(generated) -> None:
    from cryptography import x509

    by_name = {d["metadata"]["name"]: d for d in generated}
    for secret, service in (
        ("fapiao-reimbursement-tls", "reimbursement"),
        ("fapiao-intake-admin-tls", "payment-intake"),
    ):
        data = by_name[secret]["stringData"]
        certificate = x509.load_pem_x509_certificate(data["tls.crt"].encode())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"{service}.default.svc" in names.get_values_for_type(x509.DNSName), secret
        ca = x509.load_pem_x509_certificate(data["ca.crt"].encode())
        assert certificate.issuer == ca.subject, secret
