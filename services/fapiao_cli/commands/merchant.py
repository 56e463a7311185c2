"""fapiao merchant add | list | show | revoke: payment_intake's merchant registry, through its
MerchantAdminService (and the local payment platform's keys for it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import grpc
from fapiao.admin.v1 import merchant_admin_service_pb2 as mpb
from google.protobuf import json_format

from fapiao_cli import clients
from fapiao_cli.local import (
    PLATFORM_DIR,
    MerchantCredentials,
    load_merchant_credentials,
    load_stack_environment,
    merchant_admin_address,
    save_merchant_credentials,
)
from fapiao_cli.main import EXIT_FAILED, EXIT_OK, CliError, command_epilog

DEFAULT_TAX_CLASSIFICATION_CODE = "3070401000000000000"


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    merchant = subparsers.add_parser("merchant", help="register merchants with payment_intake")
    commands = merchant.add_subparsers(dest="merchant_command", required=True)
    add = commands.add_parser(
        "add",
        help="register or update a merchant; prints what the payment system needs",
        description="Registers the merchant, trusting the local payment platform's signing key (created once "
        "under .run/platform) so that `fapiao pay` can act as the platform.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog(
            'fapiao merchant add --merchant-id 1900000001 --legal-name "深圳示例餐饮有限公司"'
            " --tax-id 91440300MA5F7QXC22 --region-code 44"
        ),
    )
    add.add_argument("--merchant-id", required=True, help="the payment platform's merchant number (mchid)")
    add.add_argument("--legal-name", required=True)
    add.add_argument("--tax-id", required=True, help="18-character unified social credit code")
    add.add_argument("--region-code", required=True, help="2-digit region code used in invoice numbers")
    add.add_argument(
        "--apiv3-key", help="32-character APIv3 key: a new merchant's (generated when omitted) or a replacement"
    )
    add.add_argument(
        "--rotate-apiv3-key",
        action="store_true",
        help="replace an existing merchant's APIv3 key by a new one (a re-run without it keeps the key)",
    )
    add.add_argument("--default-item-name", default="餐饮服务")
    add.add_argument("--default-tax-rate-bp", type=int, default=600)
    add.set_defaults(handler=_add)
    show = commands.add_parser("show", help="a merchant's profile and trusted platform serials (no keys)")
    show.add_argument("--merchant-id", required=True)
    show.set_defaults(handler=_show)
    listing = commands.add_parser("list", help="every merchant: id, active or revoked, legal name")
    listing.set_defaults(handler=_list)
    revoke = commands.add_parser("revoke", help="revoke a merchant: the webhook refuses its notifications")
    revoke.add_argument("--merchant-id", required=True)
    revoke.set_defaults(handler=_revoke)
    add_key = commands.add_parser(
        "add-platform-key",
        help="trust another payment-platform certificate serial (rotation, step 1); prints the merchant",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog(
            "fapiao merchant add-platform-key --merchant-id 1900000001 --serial 7132D72A03E93CDD --public-key new.pem"
        ),
    )
    add_key.add_argument("--merchant-id", required=True)
    add_key.add_argument("--serial", required=True, help="the certificate serial the platform signs with")
    add_key.add_argument("--public-key", required=True, type=Path, help="the platform's public key (PEM file)")
    add_key.set_defaults(handler=_add_platform_key)
    remove_key = commands.add_parser(
        "remove-platform-key",
        help="stop trusting a retired serial (rotation, step 2; the last one stays); prints the merchant",
    )
    remove_key.add_argument("--merchant-id", required=True)
    remove_key.add_argument("--serial", required=True)
    remove_key.set_defaults(handler=_remove_platform_key)


def register_merchant(
    merchant_id: str,
    legal_name: str,
    tax_id: str,
    region_code: str,
    apiv3_key: str | None = None,
    default_item_name: str = "餐饮服务",
    default_tax_rate_bp: int = 600,
    rotate_apiv3_key: bool = False,
) -> dict[str, object]:
    """Register through payment_intake's MerchantAdminService as the local operator; returns the JSON
    answer the payment system needs (merchant id, tax id, `created`, the APIv3 key when this call set it,
    trusted serials, notify path). ValueError on rejection.

    The local payment platform's copy of the APIv3 key is replaced only when the registration set one.
    """
    load_stack_environment()
    key = _platform_key()
    return _register_through_api(
        _admin_address(),
        key,
        mpb.RegisterMerchantRequest(
            merchant_id=merchant_id,
            legal_name=legal_name,
            tax_id=tax_id,
            region_code=region_code,
            default_tax_classification_code=DEFAULT_TAX_CLASSIFICATION_CODE,
            default_item_name=default_item_name,
            default_tax_rate_bp=default_tax_rate_bp,
            platform_keys=[mpb.PlatformKey(serial=key["serial"], public_key_pem=Path(key["public_key"]).read_bytes())],
        ),
        apiv3_key,
        rotate_apiv3_key,
    )


def _admin_address() -> str:
    """Where the running stack serves MerchantAdminService; CliError for a stack that records none."""
    address = merchant_admin_address()
    if address is None:
        raise CliError("this stack serves no merchant admin API (its stack.json records no merchant_admin)")
    return address


def _register_through_api(
    address: str,
    key: dict[str, str],
    request: mpb.RegisterMerchantRequest,
    apiv3_key: str | None,
    rotate_apiv3_key: bool,
) -> dict[str, object]:
    from payment_intake.wechatpay import generate_apiv3_key

    if apiv3_key and rotate_apiv3_key:
        raise ValueError("give --apiv3-key or --rotate-apiv3-key, not both")
    if rotate_apiv3_key:
        request.replace_apiv3_key = generate_apiv3_key().decode()
    elif apiv3_key:
        request.replace_apiv3_key = apiv3_key
    else:
        request.apiv3_key_if_new = generate_apiv3_key().decode()
    try:
        reply = asyncio.run(_call(address, "RegisterMerchant", request))
    except grpc.aio.AioRpcError as exc:
        raise ValueError(clients.describe_refusal(exc)) from None
    merchant = reply.merchant
    answer: dict[str, object] = {
        "merchant_id": merchant.merchant_id,
        "tax_id": merchant.tax_id,
        # New: this call's key for a new merchant is the stored one (a replacement says nothing of that).
        "created": reply.apiv3_key_stored and bool(request.apiv3_key_if_new),
    }
    if reply.apiv3_key_stored:  # printed once, when it is set; a re-run keeps the stored key
        answer["apiv3_key"] = request.replace_apiv3_key or request.apiv3_key_if_new
        save_merchant_credentials(
            MerchantCredentials(
                merchant.merchant_id, str(answer["apiv3_key"]), key["serial"], PLATFORM_DIR / key["private_name"]
            )
        )
    answer["trusted_platform_serials"] = list(merchant.trusted_platform_serials)
    answer["notify_path"] = merchant.notify_path
    return answer


async def _call(address: str, method: str, request: Any) -> Any:
    """One MerchantAdminService call as the local operator."""
    try:
        stub = clients.merchant_admin(address)
    except FileNotFoundError as exc:
        raise clients.missing_operator_certificate(exc) from None
    return await getattr(stub, method)(request, timeout=10)


def _admin_call(method: str, request: Any) -> Any:
    """A MerchantAdminService call for the list, show and revoke commands, refusals as CliError."""
    load_stack_environment()
    address = _admin_address()
    try:
        return asyncio.run(_call(address, method, request))
    except grpc.aio.AioRpcError as exc:
        raise clients.admin_refusal(exc) from None


def _platform_key() -> dict[str, str]:
    """The local payment platform's RSA key (created once under .run/platform)."""
    from payment_intake import cli as intake_cli

    PLATFORM_DIR.mkdir(parents=True, exist_ok=True)
    PLATFORM_DIR.chmod(0o700)
    existing = sorted(PLATFORM_DIR.glob("platform_*_key.pem"))
    if not existing:
        with contextlib.redirect_stdout(io.StringIO()):
            intake_cli.main(["platform-key", "generate", "--out", str(PLATFORM_DIR)])
        existing = sorted(PLATFORM_DIR.glob("platform_*_key.pem"))
    private = existing[0]
    serial = private.name[len("platform_") : -len("_key.pem")]
    public = PLATFORM_DIR / f"platform_{serial}_pub.pem"
    return {"serial": serial, "public_key": str(public), "private_name": private.name}


def _add(args: argparse.Namespace) -> int:
    try:
        answer = register_merchant(
            args.merchant_id,
            args.legal_name,
            args.tax_id,
            args.region_code,
            args.apiv3_key,
            args.default_item_name,
            args.default_tax_rate_bp,
            args.rotate_apiv3_key,
        )
    except ValueError as exc:
        raise CliError(f"merchant rejected: {exc}") from None
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    if "apiv3_key" not in answer:
        try:
            load_merchant_credentials(args.merchant_id)
        except LookupError:
            print(
                "fapiao: the merchant's APIv3 key was kept and this machine has no copy of it, so `fapiao pay`"
                " cannot act for it; --rotate-apiv3-key sets a new one (the payment system must then use it)",
                file=sys.stderr,
            )
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    listing = _admin_call("ListMerchants", mpb.ListMerchantsRequest())
    for merchant in listing.merchants:
        if merchant.merchant_id == args.merchant_id:
            print(_json(merchant))
            return EXIT_OK
    raise CliError(f"no merchant {args.merchant_id}", EXIT_FAILED)


def _list(args: argparse.Namespace) -> int:
    for merchant in _admin_call("ListMerchants", mpb.ListMerchantsRequest()).merchants:
        print(f"{merchant.merchant_id}\t{'active' if merchant.active else 'revoked'}\t{merchant.legal_name}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    reply = _admin_call("RevokeMerchant", mpb.RevokeMerchantRequest(merchant_id=args.merchant_id))
    print(f"merchant {reply.merchant.merchant_id} revoked")
    return EXIT_OK


def _add_platform_key(args: argparse.Namespace) -> int:
    try:
        pem = args.public_key.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.public_key}: {exc.strerror}") from None
    key = mpb.PlatformKey(serial=args.serial, public_key_pem=pem)
    reply = _admin_call("AddPlatformKey", mpb.AddPlatformKeyRequest(merchant_id=args.merchant_id, key=key))
    print(_json(reply.merchant))
    return EXIT_OK


def _remove_platform_key(args: argparse.Namespace) -> int:
    request = mpb.RemovePlatformKeyRequest(merchant_id=args.merchant_id, serial=args.serial)
    reply = _admin_call("RemovePlatformKey", request)
    print(_json(reply.merchant))
    if not reply.removed:
        print(f"fapiao: serial {args.serial} was not trusted by merchant {args.merchant_id}", file=sys.stderr)
    return EXIT_OK


def _json(merchant: mpb.Merchant) -> str:
    return json_format.MessageToJson(
        merchant,
        ensure_ascii=False,
        indent=2,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
