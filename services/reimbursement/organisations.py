"""The registry of organisations (finance departments) allowed to call the reimbursement API."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from fapiao_runtime.errors import InvalidArgument, NotFound
from fapiao_runtime.tax_id import validate_uscc


@dataclass(frozen=True)
class Organisation:
    tax_id: str
    name: str
    active: bool


def check_tax_id(tax_id: str) -> str:
    """Return `tax_id` normalised if it is a valid unified social credit code; else InvalidArgument INVALID_TAX_ID."""
    return validate_uscc(tax_id)


async def add_organisation(conn: asyncpg.Connection, tax_id: str, name: str) -> Organisation:
    """Register (or re-activate) an organisation. InvalidArgument for a bad tax id or name."""
    tax_id = check_tax_id(tax_id)
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidArgument("INVALID_NAME", "organisation name must be 1 to 200 characters")
    await conn.execute(
        "INSERT INTO organisations (tax_id, name) VALUES ($1, $2)"
        " ON CONFLICT (tax_id) DO UPDATE SET name = EXCLUDED.name, status = 'ACTIVE', revoked_at = NULL",
        tax_id,
        name,
    )
    return Organisation(tax_id, name, True)


async def revoke_organisation(conn: asyncpg.Connection, tax_id: str) -> Organisation:
    """Revoke an organisation: from now on its certificate is refused (UNAUTHENTICATED). NotFound if unknown.

    Revoking a revoked organisation keeps its first revocation time and succeeds again.
    """
    tax_id = check_tax_id(tax_id)
    name = await conn.fetchval(
        "UPDATE organisations SET status = 'REVOKED', revoked_at = COALESCE(revoked_at, now()) WHERE tax_id = $1"
        " RETURNING name",
        tax_id,
    )
    if name is None:
        raise NotFound("UNKNOWN_ORGANISATION", "no organisation with this tax id")
    return Organisation(tax_id, name, False)


async def find_organisation(conn: asyncpg.Connection | asyncpg.Pool, tax_id: str) -> Organisation | None:
    row = await conn.fetchrow("SELECT tax_id, name, status FROM organisations WHERE tax_id = $1", tax_id)
    if row is None:
        return None
    return Organisation(row["tax_id"], row["name"], row["status"] == "ACTIVE")


async def list_organisations(conn: asyncpg.Connection) -> list[Organisation]:
    rows = await conn.fetch("SELECT tax_id, name, status FROM organisations ORDER BY tax_id")
    return [Organisation(r["tax_id"], r["name"], r["status"] == "ACTIVE") for r in rows]
