"""payment_intake's maintenance commands, run where the service runs (its DATABASE_URL and keys).

    python -m payment_intake.cli secrets reseal    (re-seal stored APIv3 keys after a FAPIAO_SECRETS_KEY rotation)
    python -m payment_intake.cli platform-key generate --out DIR    (a test/demo platform key pair; no database)

Merchants are registered, listed, revoked and their platform keys rotated through MerchantAdminService
(`fapiao merchant ...`), never by writing into the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from fapiao_runtime.config import LOCAL_DATABASE_URL, env_str
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.sealing import SealedValueError, SecretsBox, previous_keys_from_env, reseal_column

from payment_intake.settings import DB_SCHEMA, load_key
from payment_intake.wechatpay import PlatformSigner

MIGRATIONS = Path(__file__).parent / "migrations"


async def _with_db(action: Any) -> Any:
    schema = env_str("FAPIAO_DB_SCHEMA", DB_SCHEMA)
    pool = await create_pool(env_str("DATABASE_URL", LOCAL_DATABASE_URL), schema, min_size=1, max_size=2)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)
        async with pool.acquire() as conn:
            return await action(conn)
    finally:
        await pool.close()


async def _reseal(args: argparse.Namespace) -> dict[str, Any]:
    """Re-seal every merchant's APIv3 key under FAPIAO_SECRETS_KEY (rotation; see docs/runbook.md)."""
    box = SecretsBox(load_key("FAPIAO_SECRETS_KEY"), previous_keys_from_env())

    async def action(conn: Any) -> dict[str, Any]:
        count = await reseal_column(
            conn,
            box,
            table="merchants",
            id_column="merchant_id",
            sealed_column="apiv3_key_sealed",
            associated_data=lambda merchant_id: str(merchant_id).encode(),
        )
        return {"resealed": {"merchants.apiv3_key_sealed": count}}

    return dict(await _with_db(action))


def _generate_platform_key(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    signer = PlatformSigner.generate()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"platform_{signer.serial}_key.pem", out / f"platform_{signer.serial}_pub.pem"
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            signer.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    public_path.write_text(signer.public_key_pem())
    return {"serial": signer.serial, "private_key": str(private_path), "public_key": str(public_path)}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m payment_intake.cli", description="payment_intake maintenance")
    groups = root.add_subparsers(dest="group", required=True)
    secrets_group = groups.add_parser("secrets").add_subparsers(dest="command", required=True)
    reseal = secrets_group.add_parser(
        "reseal", help="re-seal stored APIv3 keys under FAPIAO_SECRETS_KEY (old keys in FAPIAO_SECRETS_KEY_PREVIOUS)"
    )
    reseal.set_defaults(run=_reseal)
    platform = groups.add_parser("platform-key").add_subparsers(dest="command", required=True)
    generate = platform.add_parser("generate", help="a platform key pair for tests and demos")
    generate.add_argument("--out", required=True)
    generate.set_defaults(sync=_generate_platform_key)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = args.sync(args) if hasattr(args, "sync") else asyncio.run(args.run(args))
    except FapiaoError as exc:
        print(json.dumps({"error": exc.reason, "message": exc.message}, ensure_ascii=False), file=sys.stderr)
        return 2
    except SealedValueError as exc:  # reseal: a value no configured key opens (its batch is unchanged)
        print(json.dumps({"error": "SEALED_VALUE_DOES_NOT_OPEN", "message": str(exc)}), file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
