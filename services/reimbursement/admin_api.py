"""OrganisationAdminService: operators register, list and revoke organisations (organisations rows).

Served on the reimbursement API's mutual-TLS port; every RPC first requires an operator certificate
(`fapiao_runtime.operators.require_operator`), then runs one statement of `reimbursement.organisations`.
"""

from __future__ import annotations

import asyncpg
import grpc
from fapiao.admin.v1 import organisation_admin_service_pb2 as apb
from fapiao.admin.v1 import organisation_admin_service_pb2_grpc as apb_grpc
from fapiao_runtime.operators import require_operator

from reimbursement.organisations import Organisation, add_organisation, list_organisations, revoke_organisation


def organisation_message(organisation: Organisation) -> apb.Organisation:
    return apb.Organisation(tax_id=organisation.tax_id, name=organisation.name, active=organisation.active)


class OrganisationAdminServicer(apb_grpc.OrganisationAdminServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def RegisterOrganisation(
        self, request: apb.RegisterOrganisationRequest, context: grpc.aio.ServicerContext
    ) -> apb.RegisterOrganisationResponse:
        require_operator(context)
        async with self._pool.acquire() as conn:
            organisation = await add_organisation(conn, request.tax_id, request.name)
        return apb.RegisterOrganisationResponse(organisation=organisation_message(organisation))

    async def ListOrganisations(
        self, request: apb.ListOrganisationsRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListOrganisationsResponse:
        require_operator(context)
        async with self._pool.acquire() as conn:
            organisations = await list_organisations(conn)
        return apb.ListOrganisationsResponse(organisations=[organisation_message(o) for o in organisations])

    async def RevokeOrganisation(
        self, request: apb.RevokeOrganisationRequest, context: grpc.aio.ServicerContext
    ) -> apb.RevokeOrganisationResponse:
        require_operator(context)
        async with self._pool.acquire() as conn:
            organisation = await revoke_organisation(conn, request.tax_id)
        return apb.RevokeOrganisationResponse(organisation=organisation_message(organisation))
