"""Environment of the local stack's processes: secrets, ledger keys and TLS material, created once.

Everything secret is generated on first `up` under .run/ (directories 0700, files 0600) and reused
later, so a restarted stack still reads what it sealed and still verifies the blocks it signed. Nothing
here is ever committed; production supplies the same variables from its secret store.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from fapiao_runtime.pki import (
    create_ca,
    issue_operator_certificate,
    issue_server_certificate,
    read_pem_pair,
    write_pem_pair,
)

from fapiao_stack.keys import ensure_local_keys, validator_env
from fapiao_stack.services import (
    GATEWAY_PORT,
    INTAKE_ADMIN_PORT,
    INTAKE_WEBHOOK_PORT,
    LEDGER_VALIDATORS,
    REIMBURSEMENT_TLS_PORT,
    ServiceSpec,
    local_services,
)

SECRET_VARIABLES = ("FAPIAO_SECRETS_KEY", "FAPIAO_PAYER_HASH_KEY", "FAPIAO_GATEWAY_SECRET")
LOOPBACK = "127.0.0.1"
# The variables naming the address each kind of server of a process listens on.
LISTEN_HOST_VARIABLES = ("FAPIAO_GRPC_HOST", "FAPIAO_HTTP_HOST", "FAPIAO_WEBHOOK_HOST", "FAPIAO_METRICS_HOST")


def service_address(name: str, addresses: Mapping[str, str] | None = None) -> str:
    """The address of service `name`: its host's in a multi-host cluster, loopback on one host."""
    return (addresses or {}).get(name, LOOPBACK)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def ensure_secrets(run_dir: Path) -> dict[str, str]:
    """32-byte keys (hex) for sealing data at rest, hashing payer ids and signing view tokens."""
    path = _private_dir(run_dir / "keys") / "secrets.json"
    if path.exists():
        values: dict[str, str] = json.loads(path.read_text())
    else:
        values = {}
    missing = [name for name in SECRET_VARIABLES if name not in values]
    if missing:
        values.update({name: secrets.token_hex(32) for name in missing})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle)
    return values


def reimbursement_certificate_name(address: str = LOOPBACK) -> str:
    """File name (without extension) under .run/pki of the reimbursement server's certificate for `address`."""
    return "reimbursement" if address == LOOPBACK else f"reimbursement-{address}"


LOCAL_OPERATOR = "local"
"""The operator whose certificate (operator-local.crt) the local stack issues for the CLI's admin calls."""


def _ensure_ca(run_dir: Path) -> Path:
    """The local certificate authority and the local operator's client certificate; returns the pki dir."""
    pki = _private_dir(run_dir / "pki")
    if not (pki / "ca.crt").exists():
        write_pem_pair(create_ca(), pki, "ca")
    if not (pki / f"operator-{LOCAL_OPERATOR}.crt").exists():
        write_pem_pair(
            issue_operator_certificate(read_pem_pair(pki, "ca"), LOCAL_OPERATOR), pki, f"operator-{LOCAL_OPERATOR}"
        )
    return pki


def _ensure_server_certificate(pki: Path, stem: str, common_name: str, address: str) -> Path:
    """`stem`.crt / .key in `pki`: a server certificate of the local CA for `address` (and loopback)."""
    if not (pki / f"{stem}.crt").exists():
        ips = (LOOPBACK,) if address == LOOPBACK else (address, LOOPBACK)
        write_pem_pair(issue_server_certificate(read_pem_pair(pki, "ca"), common_name, ip_addresses=ips), pki, stem)
    return pki / stem


def ensure_pki(run_dir: Path, address: str = LOOPBACK) -> Path:
    """The local certificate authority, the local operator's client certificate and the reimbursement
    server's certificate for `address` (its IP in the certificate); returns the pki dir."""
    pki = _ensure_ca(run_dir)
    _ensure_server_certificate(pki, reimbursement_certificate_name(address), "reimbursement", address)
    return pki


def intake_admin_certificate(run_dir: Path, address: str = LOOPBACK) -> Path:
    """payment_intake's admin port server certificate for `address` (`payment_intake[-ADDRESS].crt`
    and .key in the pki dir, issued by the local CA when missing); returns the path without extension."""
    stem = "payment_intake" if address == LOOPBACK else f"payment_intake-{address}"
    return _ensure_server_certificate(_ensure_ca(run_dir), stem, "payment_intake", address)


def intake_admin_address(address: str = LOOPBACK) -> str:
    """Where payment_intake's MerchantAdminService listens (recorded in stack.json as `merchant_admin`)."""
    return f"{address}:{INTAKE_ADMIN_PORT}"


def ledger_endpoints(addresses: Mapping[str, str] | None = None) -> str:
    return ",".join(f"{service_address(s.name, addresses)}:{s.port}" for s in local_services() if s.module == "ledger")


def metrics_endpoints(addresses: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Each process's /metrics, recorded in stack.json as `metrics` (what a Prometheus scrapes):
    name -> {"job": the service, "address": host:port}."""
    return {
        s.name: {"job": s.module, "address": f"{service_address(s.name, addresses)}:{s.metrics_port}"}
        for s in local_services()
        if s.metrics_port
    }


def stack_environment(
    run_dir: Path, kafka_bootstrap: str, database_url: str, addresses: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Variables every process of the stack gets (secrets included; never printed). `addresses`: the
    address of each service by name (a multi-host cluster); loopback for the others."""
    env = dict(os.environ)
    env.update(ensure_secrets(run_dir))
    env.update(ensure_local_keys(run_dir, LEDGER_VALIDATORS))
    env.update(
        {
            "FAPIAO_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "DATABASE_URL": database_url,
            "FAPIAO_LEDGER_ENDPOINTS": ledger_endpoints(addresses),
            "FAPIAO_CLAIM_BASE_URL": f"http://{service_address('gateway', addresses)}:{GATEWAY_PORT}/claim",
            "FAPIAO_INTAKE_WEBHOOK_URL": f"http://{service_address('payment_intake', addresses)}:{INTAKE_WEBHOOK_PORT}",
            "FAPIAO_MINTING_ENDPOINT": next(
                f"{service_address(s.name, addresses)}:{s.port}"
                for s in local_services()
                if s.module == "invoice_minting"
            ),
            "FAPIAO_RUN_DIR": str(run_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def process_environment(
    spec: ServiceSpec, run_dir: Path, base: dict[str, str], address: str = LOOPBACK
) -> dict[str, str]:
    """`base` plus what this one process needs: the address and ports it listens on, its validator
    key, its TLS files."""
    env = dict(base)
    env.update(spec.env)
    env.update(dict.fromkeys(LISTEN_HOST_VARIABLES, address))
    env["FAPIAO_GRPC_PORT" if spec.health == "grpc" else "FAPIAO_HTTP_PORT"] = str(spec.port)
    env["FAPIAO_METRICS_PORT"] = str(spec.metrics_port)
    if spec.module == "ledger":
        index = int(spec.name.rsplit("-", 1)[1])
        env.update(validator_env(run_dir, LEDGER_VALIDATORS, index))
    if spec.module == "payment_intake":
        stem = intake_admin_certificate(run_dir, address)
        env.update(
            {
                "FAPIAO_INTAKE_ADMIN_TLS_CERT_FILE": f"{stem}.crt",
                "FAPIAO_INTAKE_ADMIN_TLS_KEY_FILE": f"{stem}.key",
                "FAPIAO_INTAKE_ADMIN_TLS_CLIENT_CA_FILE": str(stem.parent / "ca.crt"),
            }
        )
    if spec.module == "reimbursement":
        pki = ensure_pki(run_dir, address)
        certificate = reimbursement_certificate_name(address)
        env.update(
            {
                "FAPIAO_REIMBURSEMENT_TLS_PORT": str(REIMBURSEMENT_TLS_PORT),
                "FAPIAO_REIMBURSEMENT_TLS_CERT_FILE": str(pki / f"{certificate}.crt"),
                "FAPIAO_REIMBURSEMENT_TLS_KEY_FILE": str(pki / f"{certificate}.key"),
                "FAPIAO_REIMBURSEMENT_CLIENT_CA_FILE": str(pki / "ca.crt"),
            }
        )
    return env
