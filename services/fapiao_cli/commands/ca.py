"""fapiao ca init | issue: the local certificate authority for mutual TLS."""

from __future__ import annotations

import argparse

from fapiao_cli.local import PKI_DIR
from fapiao_cli.main import EXIT_OK, EXIT_USAGE, CliError


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ca = subparsers.add_parser("ca", help="local certificate authority (mutual TLS)")
    commands = ca.add_subparsers(dest="ca_command", required=True)
    init = commands.add_parser("init", help="create the CA key and certificate (fapiao up does this once)")
    init.add_argument("--dir", default=str(PKI_DIR), help=f"where to write (default {PKI_DIR})")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=_run)
    issue = commands.add_parser(
        "issue", help="issue an organisation's, an operator's or a service's client certificate, or a server's"
    )
    issue.add_argument("--dir", default=str(PKI_DIR))
    kind = issue.add_mutually_exclusive_group(required=True)
    kind.add_argument("--org-tax-id", help="organisation certificate carrying this unified social credit code")
    kind.add_argument("--server", metavar="NAME", help="server certificate for 127.0.0.1 / localhost")
    kind.add_argument("--service", metavar="NAME", help="client certificate of a service (mutual TLS between services)")
    kind.add_argument("--operator", metavar="NAME", help="client certificate of an operator (calls the admin services)")
    issue.add_argument("--name", default="", help="organisation name (with --org-tax-id)")
    issue.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from reimbursement import cli as reimbursement_cli

    if args.ca_command == "init":
        argv = ["ca", "init", "--dir", args.dir] + (["--force"] if args.force else [])
    elif args.org_tax_id:
        if not args.name:
            raise CliError("--name is required with --org-tax-id")
        argv = ["ca", "issue-org", "--dir", args.dir, "--tax-id", args.org_tax_id, "--name", args.name]
    elif args.service:
        argv = ["ca", "issue-service", "--dir", args.dir, "--name", args.service]
    elif args.operator:
        argv = ["ca", "issue-operator", "--dir", args.dir, "--name", args.operator]
    else:
        argv = ["ca", "issue-server", "--dir", args.dir, "--name", args.server]
    try:
        return EXIT_OK if reimbursement_cli.main(argv) == 0 else EXIT_USAGE
    except ValueError as exc:
        raise CliError(str(exc)) from None
