"""fapiao verify: check an invoice's ledger receipt offline, with only the validators' public keys.

    fapiao verify receipt.json                       # offline: nothing is contacted
    fapiao verify --invoice-number N [--save F]      # fetch the receipts from a validator, then verify offline

The receipt proves (RFC 6962 inclusion + quorum of validator signatures over the block header) that the
transaction and its result are in a final block. For an invoice, the ISSUE receipt also carries the
issuer-signed invoice bytes; the latest receipt gives its current state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao_runtime.invoice_verify import NumberOnly, Outcome, Verdict, decide, read_issue
from fapiao_runtime.ledger_client import FAILOVER_CODES, NoValidatorAnswered, ValidatorClient
from fapiao_runtime.ledger_trust import (
    PublicKeys,
    ReceiptInvalid,
    parse_key_list,
    validator_keys_from_env,
    verify_receipt,
)
from fapiao_runtime.vocabulary import is_invoice_number
from google.protobuf import json_format

from fapiao_cli.local import ledger_addresses
from fapiao_cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, CliError, command_epilog

FETCH_TIMEOUT_S = 5.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    verify = subparsers.add_parser(
        "verify",
        help="verify a receipt file, or an invoice number, offline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog(
            "fapiao verify receipt.json",
            "fapiao verify --invoice-number 44260000000000000001 --save receipt.json",
        ),
    )
    verify.add_argument("receipt", nargs="?", type=Path, help="receipt file (JSON or binary protobuf)")
    verify.add_argument("--invoice-number", default="", help="fetch this invoice's receipts from a validator")
    verify.add_argument("--save", type=Path, help="with --invoice-number: write the latest receipt here")
    verify.add_argument("--validator-keys", default="", help="id:<b64 raw Ed25519 key>,... (default: the stack's)")
    verify.set_defaults(handler=_verify)


def _keys(args: argparse.Namespace) -> PublicKeys:
    if args.validator_keys:
        return parse_key_list(args.validator_keys)
    keys = validator_keys_from_env()
    if not keys:
        from fapiao_cli.local import load_stack_environment

        load_stack_environment()
        keys = validator_keys_from_env()
    return keys


def verify_invoice_receipts(
    state: ledger_service_pb2.GetInvoiceStateResponse, keys: PublicKeys, invoice_number: str = ""
) -> tuple[invoice_pb2.InvoiceBody, Verdict]:
    """Verify the ISSUE and latest receipts offline (`fapiao_runtime.invoice_verify`, without issuer
    keys); return the issued invoice body and the verdict with its current status.

    `invoice_number` defaults to the one the answer's state names. Raises ReceiptInvalid naming the
    first failed check (ISSUE_NOT_FINAL while the ISSUE is not in a final block).
    """
    claim = NumberOnly(invoice_number or state.state.invoice_number)
    issued = read_issue(claim, state, keys, None)
    if isinstance(issued, Verdict):
        if issued.outcome is Outcome.FORGED:
            raise ReceiptInvalid(issued.reason, "the ledger's answer does not verify")
        raise ReceiptInvalid("ISSUE_NOT_FINAL", "the ISSUE transaction is not in a final block yet")
    verdict = decide(issued, keys, None, None, check_issuer=False)
    if not verdict.verified:
        raise ReceiptInvalid(verdict.reason, "the ledger's answer does not verify")
    return issued.body, verdict


def _verify(args: argparse.Namespace) -> int:
    if bool(args.receipt) == bool(args.invoice_number):
        raise CliError("give a receipt file or --invoice-number (not both)")
    if args.invoice_number and not is_invoice_number(args.invoice_number):
        raise CliError(f"--invoice-number must be the invoice's 20 digits, got {args.invoice_number!r}")
    keys = _keys(args)
    if not keys:
        raise CliError("no validator keys (use --validator-keys or FAPIAO_LEDGER_VALIDATOR_KEYS)")
    if args.receipt:
        from ledger.verify import load_receipt

        try:
            receipt = load_receipt(args.receipt.read_bytes())
            result = verify_receipt(receipt, keys)
        except (OSError, ValueError) as exc:
            raise CliError(str(exc), EXIT_FAILED if isinstance(exc, ReceiptInvalid) else EXIT_USAGE) from None
        print(json.dumps({"verified": True, "result": json_format.MessageToDict(result)}, ensure_ascii=False))
        return EXIT_OK
    try:
        state = asyncio.run(_fetch(args.invoice_number))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            print(json.dumps({"verified": False, "reason": "NOT_ON_LEDGER"}))
            return EXIT_FAILED
        raise CliError(f"the validator refused: {exc.code().name}", EXIT_UNREACHABLE) from None
    except NoValidatorAnswered as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from None
    if args.save:
        args.save.write_text(json_format.MessageToJson(state.receipt if state.receipt.header else state.issue_receipt))
    try:
        body, verdict = verify_invoice_receipts(state, keys, args.invoice_number)
    except ReceiptInvalid as exc:
        print(json.dumps({"verified": False, "reason": exc.reason, "message": exc.message}))
        return EXIT_FAILED
    print(
        json.dumps(
            {
                "verified": True,
                "invoice_number": body.invoice_number,
                "seller": body.seller.name,
                "total_fen": body.total_fen,
                "issue_date": body.issue_date,
                "status": ledger_pb2.InvoiceLedgerStatus.Name(verdict.status),
                "chain": verdict.chain_id,
                "height": verdict.height,
            },
            ensure_ascii=False,
        )
    )
    return EXIT_OK


async def _fetch(invoice_number: str) -> ledger_service_pb2.GetInvoiceStateResponse:
    """Ask the validators in turn (`ValidatorClient`, failing over as every service does; a faulty one
    answering INTERNAL too): the answer is verified offline, so any one will do. NOT_FOUND is an answer."""
    validators = ValidatorClient(ledger_addresses(), FETCH_TIMEOUT_S)
    try:
        reply: ledger_service_pb2.GetInvoiceStateResponse = await validators.call(
            "GetInvoiceState",
            ledger_service_pb2.GetInvoiceStateRequest(invoice_number=invoice_number),
            failover=FAILOVER_CODES | {grpc.StatusCode.INTERNAL},
        )
        return reply
    finally:
        await validators.close()
