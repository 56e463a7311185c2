"""The Secrets and the trust ConfigMap the Kubernetes manifests of deploy/k8s read, generated, never committed.

    python deploy/k8s/make_secrets.py OUT_DIR > secrets.yaml     # then: kubectl apply -f secrets.yaml

Keys and certificates are made (or reused) in OUT_DIR by the compose init step
(deploy/containers/compose_init.py), so one set of keys serves both. Written to stdout:

  ConfigMap fapiao-ledger-trust    public: validator and authority public keys, the Kafka cluster id
  Secret fapiao-validator-N        validator.pem: validator N's private key (one Secret per validator)
  Secret fapiao-authority          authority.pem: the registry authority's key (invoice-minting, reimbursement)
  Secret fapiao-reimbursement-tls  tls.crt, tls.key (DNS names reimbursement, reimbursement.NAMESPACE.svc, ...),
                                   ca.crt (the CA of the organisations' and operators' client certificates)
  Secret fapiao-intake-admin-tls   tls.crt, tls.key (DNS names payment-intake, payment-intake.NAMESPACE.svc, ...),
                                   ca.crt (the CA of the operators' client certificates): MerchantAdminService
  Secret fapiao-database           DATABASE_URL (every service but the gateway)
  Secret fapiao-postgres           POSTGRES_PASSWORD (the postgres StatefulSet)
  Secret fapiao-payment-intake     FAPIAO_SECRETS_KEY, FAPIAO_PAYER_HASH_KEY
  Secret fapiao-invoice-minting    FAPIAO_SECRETS_KEY
  Secret fapiao-gateway            FAPIAO_GATEWAY_SECRET
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "containers"))

import compose_init
from fapiao_runtime.pki import issue_server_certificate, read_pem_pair, write_pem_pair
from fapiao_stack.config import ensure_secrets
from fapiao_stack.keys import ensure_local_keys, validator_id
from fapiao_stack.services import LEDGER_VALIDATORS

LABELS = {"app.kubernetes.io/part-of": "fapiao"}
SERVICE_SECRETS = {
    "fapiao-payment-intake": compose_init.SERVICE_SECRETS["payment_intake"],
    "fapiao-invoice-minting": compose_init.SERVICE_SECRETS["invoice_minting"],
    "fapiao-gateway": compose_init.SERVICE_SECRETS["gateway"],
}


def _object(kind: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    body = "stringData" if kind == "Secret" else "data"
    document: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "labels": LABELS}}
    if kind == "Secret":
        document["type"] = "Opaque"
    document[body] = data
    return document


def server_tls(out: Path, service: str, namespace: str) -> dict[str, str]:
    """tls.crt, tls.key and ca.crt of a mutual-TLS port: `service`'s server certificate under its Service's
    DNS names, and the CA of the client certificates it accepts."""
    pki = out / "pki"
    stem = f"{service}-k8s-{namespace}"
    if not (pki / f"{stem}.crt").exists():
        ca = read_pem_pair(pki, "ca")
        names = (service, f"{service}.{namespace}", f"{service}.{namespace}.svc", "localhost")
        write_pem_pair(issue_server_certificate(ca, service, dns_names=names), pki, stem)
    return {
        "tls.crt": (pki / f"{stem}.crt").read_text(),
        "tls.key": (pki / f"{stem}.key").read_text(),
        "ca.crt": (pki / "ca.crt").read_text(),
    }


def objects(out: Path, database_host: str, namespace: str) -> list[dict[str, Any]]:
    """Every Secret and the trust ConfigMap, from the keys under `out` (made when missing)."""
    compose_init.generate(out)
    shared = ensure_secrets(out)
    public = ensure_local_keys(out, LEDGER_VALIDATORS)
    keys = out / "keys"
    password = (keys / "postgres-password").read_text().strip()
    cluster_id = (out / "kafka-cluster-id").read_text().strip()
    documents = [
        _object(
            "ConfigMap",
            "fapiao-ledger-trust",
            {
                "FAPIAO_LEDGER_VALIDATOR_KEYS": public["FAPIAO_LEDGER_VALIDATOR_KEYS"],
                "FAPIAO_LEDGER_AUTHORITY_KEYS": public["FAPIAO_LEDGER_AUTHORITY_KEYS"],
                "KAFKA_CLUSTER_ID": cluster_id,
            },
        )
    ]
    for index in range(1, LEDGER_VALIDATORS + 1):
        pem = (keys / f"{validator_id(index)}.pem").read_text()
        documents.append(_object("Secret", f"fapiao-validator-{index}", {"validator.pem": pem}))
    documents.append(
        _object(
            "Secret", "fapiao-authority", {"authority.pem": (keys / f"{compose_init.AUTHORITY_KEY_ID}.pem").read_text()}
        )
    )
    documents.append(_object("Secret", "fapiao-reimbursement-tls", server_tls(out, "reimbursement", namespace)))
    documents.append(_object("Secret", "fapiao-intake-admin-tls", server_tls(out, "payment-intake", namespace)))
    url = f"postgresql://{compose_init.DATABASE_USER}:{password}@{database_host}/{compose_init.DATABASE_NAME}"
    documents.append(_object("Secret", "fapiao-database", {"DATABASE_URL": url}))
    documents.append(_object("Secret", "fapiao-postgres", {"POSTGRES_PASSWORD": password}))
    for name, variables in SERVICE_SECRETS.items():
        documents.append(_object("Secret", name, {variable: shared[variable] for variable in variables}))
    return documents


def render(documents: list[dict[str, Any]]) -> str:
    """Multi-document YAML (each document written as JSON, which YAML reads as is)."""
    return "".join(f"---\n{json.dumps(document, indent=2)}\n" for document in documents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="directory of the keys (the compose init step's)")
    parser.add_argument("--database-host", default="postgres:5432", help="host:port in DATABASE_URL")
    parser.add_argument(
        "--namespace", default="default", help="namespace of the Services (in the TLS server certificates)"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(render(objects(args.out.resolve(), args.database_host, args.namespace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
