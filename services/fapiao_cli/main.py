"""`fapiao` command line. Exit codes: 0 success, 1 the checked thing failed (unhealthy, not genuine,
audit finding, refused), 2 usage error, 3 could not reach a service.

Each sub-command lives in its own module under fapiao_cli/commands and registers itself with
`add_parser(subparsers)`; the handler returns the exit code, or raises CliError. Results go to stdout,
errors to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

EXIT_CODES = "exit codes: 0 ok, 1 check failed or refused, 2 usage error, 3 service unreachable"


class CliError(Exception):
    """An error the command reports on stderr as `fapiao: <message>`, exiting with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def command_epilog(*examples: str) -> str:
    """The help text after a sub-command's options: examples, then the exit codes."""
    lines = ["examples:", *(f"  {example}" for example in examples), "", EXIT_CODES] if examples else [EXIT_CODES]
    return "\n".join(lines)


# Modules under fapiao_cli.commands, each with add_parser(subparsers).
COMMAND_MODULES = ("stack", "merchant", "org", "ca", "pay", "claim", "verify", "audit", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fapiao",
        description="Fapiao blockchain e-invoice network: run the local stack and use it.",
        epilog=EXIT_CODES,
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
        code = int(args.handler(args))
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        print(f"fapiao: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # before ConnectionError, of which it is a kind
        # The reader went away (`fapiao status --json | head`): what it read was complete; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConnectionError as exc:
        print(f"fapiao: cannot reach a service: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
