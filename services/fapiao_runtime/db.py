"""PostgreSQL: an asyncpg pool bound to the service's own schema, and versioned SQL migrations.

Migrations are files named NNNN_description.sql in a service's migrations directory. They are
applied in order at start-up inside one transaction each, under an advisory lock so that several
replicas starting together apply each migration once. The runtime's own tables (outbox,
processed_events) are migration 0000 of every schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# Bounds on waiting for PostgreSQL, so that a request made while the server is down or unreachable fails
# (UNAVAILABLE) instead of hanging: opening a connection (also when the pool replaces a broken one), and
# any one statement.
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0

_RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    """Schemas are interpolated into SQL, so only lower-case identifiers are allowed."""
    if not _SCHEMA.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


async def keep_session(_conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's reset query, which costs a round trip on every release.

    asyncpg still rolls back a transaction left open before this runs. Fapiao's pooled connections
    change no session state that could leak to the next user: settings are SET LOCAL, the two advisory
    locks (migrations, the outbox relay's election) are released in `finally` blocks, cursors are not
    used, and a LISTEN left behind only delivers notifications nobody listens to.
    """


async def create_pool(database_url: str, schema: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """Pool whose connections use `schema` first on the search path. Creates the schema if needed."""
    check_schema_name(schema)
    conn = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    except asyncpg.UniqueViolationError:
        pass  # two replicas raced to create it; it exists now
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": f"{schema},public", "application_name": schema},
        command_timeout=COMMAND_TIMEOUT_S,
        timeout=CONNECT_TIMEOUT_S,
        reset=keep_session,
    )
    assert pool is not None
    return pool


def _migration_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} must be named NNNN_description.sql")
        found.append((int(match.group(1)), path))
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}")
    return found


async def apply_migrations(pool: asyncpg.Pool, schema: str, directory: Path | None) -> list[str]:
    """Apply the runtime's migrations and then those in `directory` to `schema`; return names applied.

    A migration already applied with different content raises RuntimeError: migrations are immutable.
    """
    check_schema_name(schema)
    applied: list[str] = []
    sources = [("runtime", _RUNTIME_MIGRATIONS)]
    if directory is not None:
        sources.append(("service", directory))
    async with pool.acquire() as conn:
        lock_key = int.from_bytes(hashlib.sha256(f"migrations:{schema}".encode()).digest()[:8], "big", signed=True)
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    source text NOT NULL,
                    version int NOT NULL,
                    name text NOT NULL,
                    sha256 text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (source, version))"""
            )
            for source, folder in sources:
                done = {
                    r["version"]: r["sha256"]
                    for r in await conn.fetch(
                        f"SELECT version, sha256 FROM {schema}.schema_migrations WHERE source = $1", source
                    )
                }
                for version, path in _migration_files(folder):
                    sql = path.read_text(encoding="utf-8")
                    digest = hashlib.sha256(sql.encode()).hexdigest()
                    if version in done:
                        if done[version] != digest:
                            raise RuntimeError(f"migration {path.name} changed after it was applied to {schema}")
                        continue
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                        await conn.execute(sql)
                        await conn.execute(
                            f"INSERT INTO {schema}.schema_migrations (source, version, name, sha256)"
                            " VALUES ($1, $2, $3, $4)",
                            source,
                            version,
                            path.name,
                            digest,
                        )
                    applied.append(f"{source}/{path.name}")
                    log.info("migration applied", extra={"schema": schema, "migration": path.name})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied
