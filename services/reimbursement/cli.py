"""Operator commands: the local certificate authority and the organisation registry.

    python -m reimbursement.cli ca init --dir DIR                  # ca.crt + ca.key
    python -m reimbursement.cli ca issue-server --dir DIR [--name reimbursement] [--dns H] [--ip A]
    python -m reimbursement.cli ca issue-org --dir DIR --tax-id CODE --name NAME
    python -m reimbursement.cli ca issue-service --dir DIR --name SERVICE   # client certificate of a service
    python -m reimbursement.cli ca issue-operator --dir DIR --name NAME      # an operator's (admin services)
    python -m reimbursement.cli org add --tax-id CODE --name NAME   # DATABASE_URL, FAPIAO_DB_SCHEMA
    python -m reimbursement.cli org revoke --tax-id CODE
    python -m reimbursement.cli org list

Private keys are written with mode 0600 and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from fapiao_runtime.config import LOCAL_DATABASE_URL, env_str
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.pki import (
    create_ca,
    issue_operator_certificate,
    issue_organisation_certificate,
    issue_server_certificate,
    issue_service_certificate,
    read_pem_pair,
    write_pem_pair,
)

from reimbursement.organisations import add_organisation, list_organisations, revoke_organisation

MIGRATIONS = Path(__file__).parent / "migrations"


def _ca(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.command == "init":
        if (directory / "ca.key").exists() and not args.force:
            print(f"{directory / 'ca.key'} exists; pass --force to replace the CA", file=sys.stderr)
            return 1
        cert, key = write_pem_pair(create_ca(args.common_name), directory, "ca")
        print(f"CA certificate {cert}\nCA key {key} (0600)")
        return 0
    ca = read_pem_pair(directory, "ca")
    if args.command == "issue-server":
        issued = issue_server_certificate(
            ca, args.name, tuple(args.dns or ["localhost"]), tuple(args.ip or ["127.0.0.1"])
        )
        cert, key = write_pem_pair(issued, directory, args.name)
    elif args.command == "issue-service":
        issued = issue_service_certificate(ca, args.name)
        cert, key = write_pem_pair(issued, directory, f"service-{args.name}")
    elif args.command == "issue-operator":
        issued = issue_operator_certificate(ca, args.name)
        cert, key = write_pem_pair(issued, directory, f"operator-{args.name}")
    else:
        issued = issue_organisation_certificate(ca, args.tax_id, args.name)
        cert, key = write_pem_pair(issued, directory, f"org-{args.tax_id}")
    print(f"certificate {cert}\nkey {key} (0600)")
    return 0


async def _org(args: argparse.Namespace) -> int:
    schema = env_str("FAPIAO_DB_SCHEMA", "reimbursement")
    pool = await create_pool(env_str("DATABASE_URL", LOCAL_DATABASE_URL), schema, min_size=1, max_size=2)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)
        async with pool.acquire() as conn:
            if args.command == "add":
                organisation = await add_organisation(conn, args.tax_id, args.name)
                print(f"organisation {organisation.tax_id} {organisation.name!r} active")
            elif args.command == "revoke":
                await revoke_organisation(conn, args.tax_id)
                print(f"organisation {args.tax_id} revoked")
            else:
                for organisation in await list_organisations(conn):
                    state = "active" if organisation.active else "revoked"
                    print(f"{organisation.tax_id}\t{state}\t{organisation.name}")
    finally:
        await pool.close()
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m reimbursement.cli", description=__doc__.split("\n")[0])
    groups = root.add_subparsers(dest="group", required=True)
    ca = groups.add_parser("ca", help="local certificate authority")
    ca_commands = ca.add_subparsers(dest="command", required=True)
    init = ca_commands.add_parser("init", help="create the CA key and self-signed certificate")
    init.add_argument("--dir", required=True)
    init.add_argument("--common-name", default="Fapiao Local CA")
    init.add_argument("--force", action="store_true")
    server = ca_commands.add_parser("issue-server", help="issue a TLS server certificate")
    server.add_argument("--dir", required=True)
    server.add_argument("--name", default="reimbursement")
    server.add_argument("--dns", action="append")
    server.add_argument("--ip", action="append")
    org_cert = ca_commands.add_parser("issue-org", help="issue an organisation's client certificate")
    org_cert.add_argument("--dir", required=True)
    org_cert.add_argument("--tax-id", required=True)
    org_cert.add_argument("--name", required=True)
    service_cert = ca_commands.add_parser(
        "issue-service", help="issue a service's client certificate (mutual TLS between services)"
    )
    service_cert.add_argument("--dir", required=True)
    service_cert.add_argument("--name", required=True)
    operator_cert = ca_commands.add_parser(
        "issue-operator", help="issue an operator's client certificate (the only one the admin services accept)"
    )
    operator_cert.add_argument("--dir", required=True)
    operator_cert.add_argument("--name", required=True)
    org = groups.add_parser("org", help="organisation registry (PostgreSQL)")
    org_commands = org.add_subparsers(dest="command", required=True)
    add = org_commands.add_parser("add", help="register or re-activate an organisation")
    add.add_argument("--tax-id", required=True)
    add.add_argument("--name", required=True)
    revoke = org_commands.add_parser("revoke", help="revoke an organisation")
    revoke.add_argument("--tax-id", required=True)
    org_commands.add_parser("list", help="list organisations")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.group == "ca":
            return _ca(args)
        return asyncio.run(_org(args))
    except (FapiaoError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
