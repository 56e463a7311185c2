"""fapiao org add | revoke | list: organisations allowed to reimburse, through OrganisationAdminService."""

from __future__ import annotations

import argparse
import asyncio

import grpc
from fapiao.admin.v1 import organisation_admin_service_pb2 as apb
from fapiao.admin.v1 import organisation_admin_service_pb2_grpc as org_admin_grpc

from fapiao_cli import clients
from fapiao_cli.local import PKI_DIR, load_stack_environment
from fapiao_cli.main import EXIT_OK, command_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    org = subparsers.add_parser(
        "org",
        help="register or revoke reimbursing organisations",
        description="Calls the reimbursement service's admin API with the local operator certificate "
        f"({PKI_DIR}/operator-local.crt, issued by `fapiao up`).",
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


def _line(organisation: apb.Organisation) -> str:
    return f"{organisation.tax_id}\t{'active' if organisation.active else 'revoked'}\t{organisation.name}"


def _admin() -> org_admin_grpc.OrganisationAdminServiceStub:
    try:
        return clients.organisation_admin()
    except FileNotFoundError as exc:
        raise clients.missing_operator_certificate(exc) from None


async def register_organisation(tax_id: str, name: str) -> apb.Organisation:
    """Register (or re-activate) an organisation through the admin API; AioRpcError on refusal."""
    admin = _admin()
    reply: apb.RegisterOrganisationResponse = await admin.RegisterOrganisation(
        apb.RegisterOrganisationRequest(tax_id=tax_id, name=name), timeout=10
    )
    return reply.organisation


async def _call(args: argparse.Namespace) -> list[str]:
    if args.org_command == "add":
        organisation = await register_organisation(args.tax_id, args.name)
        return [f"organisation {organisation.tax_id} {organisation.name!r} active"]
    admin = _admin()
    if args.org_command == "revoke":
        revoked = await admin.RevokeOrganisation(apb.RevokeOrganisationRequest(tax_id=args.tax_id), timeout=10)
        return [f"organisation {revoked.organisation.tax_id} revoked"]
    listing = await admin.ListOrganisations(apb.ListOrganisationsRequest(), timeout=10)
    return [_line(o) for o in listing.organisations]


def _run(args: argparse.Namespace) -> int:
    load_stack_environment()
    try:
        lines = asyncio.run(_call(args))
    except grpc.aio.AioRpcError as exc:
        raise clients.admin_refusal(exc) from None
    for line in lines:
        print(line)
    return EXIT_OK
