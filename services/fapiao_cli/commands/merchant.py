"""fapiao merchant add | show: the merchant registry of payment_intake (and the platform's keys for it)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

from fapiao_cli.local import (
    PLATFORM_DIR,
    MerchantCredentials,
    load_merchant_credentials,
    load_stack_environment,
    save_merchant_credentials,
)
from fapiao_cli.main import EXIT_OK, EXIT_USAGE, CliError, command_epilog


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    merchant = subparsers.add_parser("merchant", help="register merchants with payment_intake")
    commands = merchant.add_subparsers(dest="merchant_command", required=True)
    add = commands.add_parser(
        "add",
        help="register or update a merchant; prints what the payment system needs",
        description="Registers the merchant; unless --platform-key is given, also creates a payment-platform "
        "signing key under .run/platform so that `fapiao pay` can act as the platform.",
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
    """Register through payment_intake's operator module; returns its JSON answer. ValueError on rejection.

    The local payment platform's copy of the APIv3 key is replaced only when the registration set one.
    """
    from payment_intake import cli as intake_cli

    load_stack_environment()
    key = _platform_key()
    argv = [
        "merchant", "add", "--merchant-id", merchant_id, "--legal-name", legal_name, "--tax-id", tax_id,
        "--region-code", region_code, "--default-item-name", default_item_name,
        "--default-tax-rate-bp", str(default_tax_rate_bp), "--platform-key", f"{key['serial']}={key['public_key']}",
    ]  # fmt: skip
    if apiv3_key:
        argv += ["--apiv3-key", apiv3_key]
    if rotate_apiv3_key:
        argv += ["--rotate-apiv3-key"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = intake_cli.main(argv)
    if code != 0:
        raise ValueError(err.getvalue().strip() or out.getvalue().strip())
    answer: dict[str, object] = json.loads(out.getvalue())
    if "apiv3_key" in answer:
        save_merchant_credentials(
            MerchantCredentials(
                merchant_id, str(answer["apiv3_key"]), key["serial"], PLATFORM_DIR / key["private_name"]
            )
        )
    return answer


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
    from payment_intake import cli as intake_cli

    load_stack_environment()
    return EXIT_OK if intake_cli.main(["merchant", "show", "--merchant-id", args.merchant_id]) == 0 else EXIT_USAGE
