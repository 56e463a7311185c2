"""Environment of the local stack's processes: secrets, ledger keys and TLS material, created once.

Everything secret is generated on first `up` under .run/ (directories 0700, files 0600) and reused
later, so a restarted stack still reads what it sealed and still verifies the blocks it signed. Nothing
here is ever committed; production supplies the same variables from its secret store.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from fapiao_runtime.pki import create_ca, issue_server_certificate, read_pem_pair, write_pem_pair

from fapiao_stack.keys import ensure_local_keys, validator_env
from fapiao_stack.services import (
    GATEWAY_PORT,
    INTAKE_WEBHOOK_PORT,
    LEDGER_VALIDATORS,
    REIMBURSEMENT_TLS_PORT,
    ServiceSpec,
    local_services,
)

SECRET_VARIABLES = ("FAPIAO_SECRETS_KEY", "FAPIAO_PAYER_HASH_KEY", "FAPIAO_GATEWAY_SECRET")


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


def ensure_pki(run_dir: Path) -> Path:
    """The local certificate authority and the reimbursement server's certificate; returns the pki dir."""
    pki = _private_dir(run_dir / "pki")
    if not (pki / "ca.crt").exists():
        write_pem_pair(create_ca(), pki, "ca")
    if not (pki / "reimbursement.crt").exists():
        ca = read_pem_pair(pki, "ca")
        write_pem_pair(issue_server_certificate(ca, "reimbursement"), pki, "reimbursement")
    return pki


def ledger_endpoints() -> str:
    return ",".join(f"127.0.0.1:{s.port}" for s in local_services() if s.module == "ledger")


def stack_environment(run_dir: Path, kafka_bootstrap: str, database_url: str) -> dict[str, str]:
    """Variables every process of the local stack gets (secrets included; never printed)."""
    env = dict(os.environ)
    env.update(ensure_secrets(run_dir))
    env.update(ensure_local_keys(run_dir, LEDGER_VALIDATORS))
    env.update(
        {
            "FAPIAO_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "DATABASE_URL": database_url,
            "FAPIAO_LEDGER_ENDPOINTS": ledger_endpoints(),
            "FAPIAO_CLAIM_BASE_URL": f"http://127.0.0.1:{GATEWAY_PORT}/claim",
            "FAPIAO_INTAKE_WEBHOOK_URL": f"http://127.0.0.1:{INTAKE_WEBHOOK_PORT}",
            "FAPIAO_MINTING_ENDPOINT": next(
                f"127.0.0.1:{s.port}" for s in local_services() if s.module == "invoice_minting"
            ),
            "FAPIAO_RUN_DIR": str(run_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def process_environment(spec: ServiceSpec, run_dir: Path, base: dict[str, str]) -> dict[str, str]:
    """`base` plus what this one process needs: its ports, its validator key, its TLS files."""
    env = dict(base)
    env.update(spec.env)
    env["FAPIAO_GRPC_PORT" if spec.health == "grpc" else "FAPIAO_HTTP_PORT"] = str(spec.port)
    env["FAPIAO_METRICS_PORT"] = str(spec.metrics_port)
    if spec.module == "ledger":
        index = int(spec.name.rsplit("-", 1)[1])
        env.update(validator_env(run_dir, LEDGER_VALIDATORS, index))
    if spec.module == "reimbursement":
        pki = ensure_pki(run_dir)
        env.update(
            {
                "FAPIAO_REIMBURSEMENT_TLS_PORT": str(REIMBURSEMENT_TLS_PORT),
                "FAPIAO_REIMBURSEMENT_TLS_CERT_FILE": str(pki / "reimbursement.crt"),
                "FAPIAO_REIMBURSEMENT_TLS_KEY_FILE": str(pki / "reimbursement.key"),
                "FAPIAO_REIMBURSEMENT_CLIENT_CA_FILE": str(pki / "ca.crt"),
            }
        )
    return env
