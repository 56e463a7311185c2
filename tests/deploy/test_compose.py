"""The compose stack's init step and compose.yaml: every file a service needs exists, each validator has
its own key, each service gets only the secrets it reads, and the start order follows depends_on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import COMPOSE_FILE, CONTAINERS, load_script

pytestmark = pytest.mark.unit

compose_init = load_script(CONTAINERS / "compose_init.py")
deploy_test = load_script(CONTAINERS / "deploy_test.py")
VALIDATORS = [f"ledger-{i}" for i in range(1, 5)]
SERVICES = ["payment_intake", *VALIDATORS, "invoice_minting", "reimbursement", "gateway"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compose")
    compose_init.generate(out)
    return out


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def env_of(out: Path, name: str) -> dict[str, str]:
    return deploy_test.read_env_file(out / "env" / f"{name}.env")


def resolve(text: str, out: Path) -> Path:
    """A compose path with ${FAPIAO_COMPOSE_DIR:-...} resolved to `out`."""
    return Path(re.sub(r"\$\{FAPIAO_COMPOSE_DIR:-[^}]*\}", str(out), text))


def test_every_env_file_and_mounted_file_compose_names_exists_after_the_init_step(generated, services) -> None:
    for name, spec in services.items():
        for env_file in spec.get("env_file", []):
            assert resolve(env_file, generated).is_file(), (name, env_file)
        for volume in spec.get("volumes", []):
            if volume.startswith("${"):
                assert Path(str(resolve(volume, generated)).split(":")[0]).is_file(), (name, volume)


def test_each_validator_reads_its_own_key_and_no_other(generated, services) -> None:
    keys = set()
    for index, name in enumerate(VALIDATORS, start=1):
        env = env_of(generated, name)
        assert env["FAPIAO_VALIDATOR_ID"] == f"validator-{index}"
        assert env["FAPIAO_DB_SCHEMA"] == f"ledger_{index}"
        assert env["FAPIAO_LEDGER_KEY_FILE"] == f"/run/secrets/validator-{index}.pem"
        mounts = [str(resolve(volume, generated)) for volume in services[name]["volumes"]]
        assert mounts == [f"{generated}/keys/validator-{index}.pem:/run/secrets/validator-{index}.pem:ro"]
        keys.add((generated / "keys" / f"validator-{index}.pem").read_bytes())
    assert len(keys) == 4


def test_each_service_env_names_the_files_it_needs_and_compose_mounts_them_there(generated, services) -> None:
    needs = {
        "payment_intake": {
            "FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE",
            "FAPIAO_INTAKE_ADMIN_TLS_KEY_FILE",
            "FAPIAO_INTAKE_ADMIN_TLS_CLIENT_CA_FILE",
        },
        "invoice_minting": {"FAPIAO_LEDGER_AUTHORITY_KEY_FILE"},
        "reimbursement": {
            "FAPIAO_LEDGER_AUTHORITY_KEY_FILE",
            "FAPIAO_REIMBURSEMENT_TLS_CERT_FILE",
            "FAPIAO_REIMBURSEMENT_TLS_KEY_FILE",
            "FAPIAO_REIMBURSEMENT_CLIENT_CA_FILE",
        },
    }
    for name in SERVICES:
        env = env_of(generated, name)
        files = {key for key, value in env.items() if value.startswith("/run/secrets/")}
        if name.startswith("ledger-"):
            assert files == {"FAPIAO_LEDGER_KEY_FILE"}
            continue
        assert files == needs.get(name, set()), name
        targets = {str(resolve(volume, generated)).split(":")[1] for volume in services[name].get("volumes", [])}
        assert {env[key] for key in files} == targets, name


def test_secrets_go_only_to_the_services_that_read_them(generated) -> None:
    shared = compose_init.ensure_secrets(generated)
    for name in SERVICES:
        env = env_of(generated, name)
        module = "ledger" if name.startswith("ledger-") else name
        given = {key for key in shared if key in env}
        assert given == set(compose_init.SERVICE_SECRETS[module]), name
        assert ("DATABASE_URL" in env) == (name != "gateway"), name
    config = env_of(generated, "config")
    assert not set(shared) & set(config)
    assert "DATABASE_URL" not in config


def test_every_service_has_its_own_ports_and_a_healthcheck_on_them(generated, services) -> None:
    ports: list[str] = []
    for name in SERVICES:
        env = env_of(generated, name)
        ports += [value for key, value in env.items() if key.endswith("_PORT")]
        check = services[name]["healthcheck"]["test"]
        assert check[:4] == ["CMD", "python", "-m", "fapiao_runtime.healthcheck"], name
        assert ("--http" in check) == ("FAPIAO_HTTP_PORT" in env), name
    assert len(ports) == len(set(ports))


def test_init_keeps_the_keys_it_made(generated) -> None:
    before = {p.name: p.read_bytes() for p in (generated / "keys").iterdir()}
    compose_init.generate(generated)
    assert {p.name: p.read_bytes() for p in (generated / "keys").iterdir()} == before


def test_start_order_puts_kafka_and_postgres_first_and_each_service_after_what_it_depends_on(services) -> None:
    tiers = deploy_test.compose_order()
    assert tiers[0] == ["kafka", "postgres"]
    position = {name: index for index, tier in enumerate(tiers) for name in tier}
    for name, spec in services.items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}
            assert position[dependency] < position[name], (name, dependency)
    assert tiers[-1] == ["gateway"]


def test_env_files_refuse_a_value_with_a_line_break(tmp_path) -> None:
    target = tmp_path / "x.env"
    for smuggled in ("1\nB=2", "1\rB=2"):
        with pytest.raises(ValueError, match="line break"):
            compose_init.write_env(target, {"A": smuggled})
        assert not target.exists()
    compose_init.write_env(target, {"A": "1", "B": "2"})
    assert [line for line in target.read_text().splitlines() if not line.startswith("#")] == ["A=1", "B=2"]


def test_the_stack_file_names_the_merchant_admin_port_payment_intake_serves(generated) -> None:
    """`fapiao merchant add` against the compose stack calls MerchantAdminService where stack.json says."""
    state = json.loads((generated / "stack.json").read_text())
    address = env_of(generated, "config")["FAPIAO_GRPC_HOST"]
    assert state["merchant_admin"] == f"{address}:{env_of(generated, 'payment_intake')['FAPIAO_INTAKE_ADMIN_PORT']}"


def test_the_stack_file_records_each_services_metrics_port_for_prometheus(generated) -> None:
    metrics = json.loads((generated / "stack.json").read_text())["metrics"]
    host = env_of(generated, "config")["FAPIAO_METRICS_HOST"]
    assert sorted(metrics) == sorted(SERVICES)
    for name in SERVICES:
        job = "ledger" if name.startswith("ledger-") else name
        assert metrics[name] == {"job": job, "address": f"{host}:{env_of(generated, name)['FAPIAO_METRICS_PORT']}"}
