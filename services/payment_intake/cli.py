"""Operator CLI for the merchant registry.

    python -m payment_intake.cli merchant add --merchant-id 1230000109 --legal-name "..." \\
        --tax-id 914403001922038216 --region-code 44 --platform-key SERIAL=platform_pub.pem
    python -m payment_intake.cli merchant add-platform-key --merchant-id ... --platform-key SERIAL=new.pem
    python -m payment_intake.cli merchant remove-platform-key --merchant-id ... --serial OLD
    python -m payment_intake.cli merchant show --merchant-id ...
    python -m payment_intake.cli platform-key generate --out DIR   (a test/demo platform key pair)

`merchant add` prints, as JSON, what the payment system needs: the merchant id, the APIv3 key (once,
when it is set: generated for a new merchant unless given; a re-run keeps the stored key unless
--apiv3-key or --rotate-apiv3-key replaces it), the trusted platform serials and the notify path.
Uses DATABASE_URL and FAPIAO_SECRETS_KEY like the service.
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

from payment_intake import merchants
from payment_intake.settings import DB_SCHEMA, load_key
from payment_intake.webhook import NOTIFY_PATH
from payment_intake.wechatpay import APIV3_KEY_BYTES, PlatformSigner, generate_apiv3_key

MIGRATIONS = Path(__file__).parent / "migrations"


def _platform_keys(values: list[str]) -> dict[str, str]:
    keys = {}
    for value in values:
        serial, sep, path = value.partition("=")
        if not sep:
            raise SystemExit(f"--platform-key expects SERIAL=PATH, got {value!r}")
        keys[serial] = Path(path).read_text()
    return keys


async def _with_db(action: Any) -> Any:
    schema = env_str("FAPIAO_DB_SCHEMA", DB_SCHEMA)
    pool = await create_pool(env_str("DATABASE_URL", LOCAL_DATABASE_URL), schema, min_size=1, max_size=2)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)
        async with pool.acquire() as conn:
            return await action(conn)
    finally:
        await pool.close()


async def _add(args: argparse.Namespace) -> dict[str, Any]:
    if args.apiv3_key and args.rotate_apiv3_key:
        raise SystemExit("give --apiv3-key or --rotate-apiv3-key, not both")
    replacing = args.apiv3_key.encode() if args.apiv3_key else None
    if args.rotate_apiv3_key:
        replacing = generate_apiv3_key()
    if replacing is not None and len(replacing) != APIV3_KEY_BYTES:
        raise SystemExit(f"--apiv3-key must be {APIV3_KEY_BYTES} ASCII characters")
    key_if_new = generate_apiv3_key() if replacing is None else None
    profile = merchants.MerchantProfile(
        args.merchant_id,
        args.legal_name,
        args.tax_id,
        args.region_code,
        args.default_tax_code,
        args.default_item_name,
        args.default_tax_rate_bp,
    )
    secrets_key = load_key("FAPIAO_SECRETS_KEY")

    async def action(conn: Any) -> dict[str, Any]:
        registered = await merchants.register_merchant(
            conn,
            secrets_key,
            profile,
            apiv3_key=replacing,
            key_if_new=key_if_new,
            platform_keys=_platform_keys(args.platform_key),
        )
        answer: dict[str, Any] = {
            "merchant_id": registered.profile.merchant_id,
            "tax_id": registered.profile.tax_id,
            "created": registered.created,
        }
        if registered.key_stored:  # printed once, when it is set; a re-run keeps the stored key
            answer["apiv3_key"] = (replacing or key_if_new or b"").decode()
        answer["trusted_platform_serials"] = await merchants.trusted_serials(conn, registered.profile.merchant_id)
        answer["notify_path"] = f"{NOTIFY_PATH}/{registered.profile.merchant_id}"
        return answer

    return dict(await _with_db(action))


async def _add_key(args: argparse.Namespace) -> dict[str, Any]:
    async def action(conn: Any) -> dict[str, Any]:
        for serial, pem in _platform_keys(args.platform_key).items():
            await merchants.add_platform_key(conn, args.merchant_id, serial, pem)
        return {
            "merchant_id": args.merchant_id,
            "trusted_platform_serials": await merchants.trusted_serials(conn, args.merchant_id),
        }

    return dict(await _with_db(action))


async def _remove_key(args: argparse.Namespace) -> dict[str, Any]:
    async def action(conn: Any) -> dict[str, Any]:
        removed = await merchants.remove_platform_key(conn, args.merchant_id, args.serial)
        serials = await merchants.trusted_serials(conn, args.merchant_id)
        return {"merchant_id": args.merchant_id, "removed": removed, "trusted_platform_serials": serials}

    return dict(await _with_db(action))


async def _show(args: argparse.Namespace) -> dict[str, Any]:
    async def action(conn: Any) -> dict[str, Any]:
        row = await conn.fetchrow(
            "SELECT merchant_id, legal_name, tax_id, region_code, default_tax_classification_code,"
            " default_item_name, default_tax_rate_bp FROM merchants WHERE merchant_id = $1",
            args.merchant_id,
        )
        if row is None:
            raise SystemExit(f"no merchant {args.merchant_id}")
        return {**dict(row), "trusted_platform_serials": await merchants.trusted_serials(conn, args.merchant_id)}

    return dict(await _with_db(action))


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
    root = argparse.ArgumentParser(prog="python -m payment_intake.cli", description="payment_intake registry")
    groups = root.add_subparsers(dest="group", required=True)
    merchant = groups.add_parser("merchant").add_subparsers(dest="command", required=True)
    add = merchant.add_parser("add", help="register or update a merchant")
    add.add_argument("--merchant-id", required=True, help="the payment platform's merchant number (mchid)")
    add.add_argument("--legal-name", required=True)
    add.add_argument("--tax-id", required=True, help="18-character unified social credit code")
    add.add_argument("--region-code", required=True, help="2-digit region code used in invoice numbers")
    add.add_argument(
        "--apiv3-key", help="32-character APIv3 key: a new merchant's, or the replacement of an existing one's"
    )
    add.add_argument(
        "--rotate-apiv3-key",
        action="store_true",
        help="generate and print a new APIv3 key for an existing merchant (without it, a re-run keeps the key)",
    )
    add.add_argument("--platform-key", action="append", default=[], metavar="SERIAL=PEM_PATH")
    add.add_argument("--default-tax-code", default="3070401000000000000", help="19-digit tax classification code")
    add.add_argument("--default-item-name", default="餐饮服务")
    add.add_argument("--default-tax-rate-bp", type=int, default=600)
    add.set_defaults(run=_add)
    add_key = merchant.add_parser("add-platform-key", help="trust another platform key serial (rotation)")
    add_key.add_argument("--merchant-id", required=True)
    add_key.add_argument("--platform-key", action="append", required=True, metavar="SERIAL=PEM_PATH")
    add_key.set_defaults(run=_add_key)
    remove_key = merchant.add_parser("remove-platform-key", help="stop trusting a retired serial")
    remove_key.add_argument("--merchant-id", required=True)
    remove_key.add_argument("--serial", required=True)
    remove_key.set_defaults(run=_remove_key)
    show = merchant.add_parser("show", help="the merchant's profile and trusted serials (no keys)")
    show.add_argument("--merchant-id", required=True)
    show.set_defaults(run=_show)
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
