"""fapiao org add | revoke | list: organisations allowed to reimburse (reimbursement's registry)."""

from __future__ import annotations

import argparse

from fapiao_cli.local import load_stack_environment
from fapiao_cli.main import EXIT_OK, EXIT_USAGE, command_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    org = subparsers.add_parser(
        "org",
        help="register or revoke reimbursing organisations",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog(
            'fapiao org add --tax-id 91440300MA5G4LPE1D --name "深圳测试科技有限公司"',
            "fapiao ca issue --org-tax-id 91440300MA5G4LPE1D --name 深圳测试科技有限公司",
            "fapiao org revoke --tax-id 91440300MA5G4LPE1D",
        ),
    )
    commands = org.add_subparsers(dest="org_command", required=True)
    add = commands.add_parser("add", help="register (or re-activate) an organisation")
    add.add_argument("--tax-id", required=True, help="unified social credit code")
    add.add_argument("--name", required=True)
    add.set_defaults(handler=_run)
    revoke = commands.add_parser("revoke", help="revoke an organisation: its certificate stops working")
    revoke.add_argument("--tax-id", required=True)
    revoke.set_defaults(handler=_run)
    listing = commands.add_parser("list", help="list organisations")
    listing.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from reimbursement import cli as reimbursement_cli

    load_stack_environment()
    argv = ["org", args.org_command]
    if args.org_command in ("add", "revoke"):
        argv += ["--tax-id", args.tax_id]
    if args.org_command == "add":
        argv += ["--name", args.name]
    return EXIT_OK if reimbursement_cli.main(argv) == 0 else EXIT_USAGE
