"""`fapiao` command line. Exit codes: 0 success, 1 the checked thing failed (unhealthy, not genuine,
audit finding), 2 usage error, 3 could not reach a service.

Each sub-command lives in its own module under fapiao_cli/commands and registers itself with
`add_parser(subparsers)`; the handler returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

# Modules under fapiao_cli.commands, each with add_parser(subparsers).
COMMAND_MODULES = ("stack", "merchant", "org", "ca", "pay", "claim", "verify", "audit", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fapiao",
        description="Fapiao blockchain e-invoice network: run the local stack and use it.",
        epilog="Exit codes: 0 ok, 1 check failed, 2 usage error, 3 service unreachable.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fapiao_cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fapiao_cli.commands.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except ConnectionError as exc:
        print(f"fapiao: cannot reach a service: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
