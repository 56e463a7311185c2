"""Offline receipt verification: python -m ledger.verify <receipt file> [--validator-keys ...] [--quorum N]

The receipt file holds a fapiao.ledger.v1.Receipt, either binary protobuf or its JSON form (as
printed by json_format). Validator public keys come from --validator-keys or
FAPIAO_LEDGER_VALIDATOR_KEYS ("validator-1:<b64 raw>,..."). Nothing else is trusted or contacted.
Exit status: 0 verified (the TransactionResult is printed as JSON), 1 invalid, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.ledger_trust import ReceiptInvalid, parse_key_list, validator_keys_from_env, verify_receipt
from google.protobuf import json_format
from google.protobuf.message import DecodeError


def load_receipt(raw: bytes) -> ledger_pb2.Receipt:
    """Parse JSON when the file looks like JSON, binary protobuf otherwise; ValueError if neither."""
    if raw.lstrip()[:1] == b"{":
        try:
            return json_format.Parse(raw.decode(), ledger_pb2.Receipt())
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a JSON receipt: {exc}") from None
    try:
        return ledger_pb2.Receipt.FromString(raw)
    except DecodeError as exc:
        raise ValueError(f"not a binary receipt: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.verify", description=__doc__.splitlines()[0])
    parser.add_argument("receipt", type=Path)
    parser.add_argument("--validator-keys", default="", help="id:<b64 raw Ed25519 public key>,...")
    parser.add_argument("--quorum", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        keys = parse_key_list(args.validator_keys) if args.validator_keys else validator_keys_from_env()
        if not keys:
            raise ValueError("no validator keys: pass --validator-keys or set FAPIAO_LEDGER_VALIDATOR_KEYS")
        receipt = load_receipt(args.receipt.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = verify_receipt(receipt, keys, args.quorum)
    except ReceiptInvalid as exc:
        print(json.dumps({"verified": False, "reason": exc.reason, "message": exc.message}))
        return 1
    print(json.dumps({"verified": True, "result": json_format.MessageToDict(result)}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
