"""fapiao audit: every validator re-verifies every hash and signature of every chain it stores."""

from __future__ import annotations

import argparse
import asyncio

import grpc
from fapiao.ledger.v1 import ledger_service_pb2
from fapiao_runtime.topics import LEDGER_TRANSACTIONS

from fapiao_cli import clients
from fapiao_cli.local import ledger_addresses
from fapiao_cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, command_epilog
from fapiao_cli.progress import ProgressBar


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = subparsers.add_parser(
        "audit",
        help="re-verify every block, transaction and signature on each validator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog("fapiao audit", "fapiao audit --chains 2 --timeout 60"),
    )
    audit.add_argument("--chains", type=int, default=LEDGER_TRANSACTIONS.partitions, help="number of chains")
    audit.add_argument("--timeout", type=float, default=300.0, help="seconds per chain audit")
    audit.set_defaults(handler=_audit)


def _audit(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args.chains, args.timeout))


async def _run(chains: int, timeout_s: float) -> int:
    stubs = list(zip(ledger_addresses(), clients.ledgers(), strict=True))
    problems: list[str] = []
    unreachable = 0
    with ProgressBar(len(stubs) * chains, "audit") as bar:
        for address, stub in stubs:
            for chain in range(chains):
                try:
                    reply = await stub.AuditChain(
                        ledger_service_pb2.AuditChainRequest(chain_id=chain), timeout=timeout_s
                    )
                except grpc.aio.AioRpcError as exc:
                    problems.append(f"{address} chain {chain}: unreachable ({exc.code().name})")
                    unreachable += 1
                    bar.advance()
                    continue
                for finding in reply.findings:
                    problems.append(f"{address} chain {chain} block {finding.height}: {finding.problem}")
                bar.advance()
                print(
                    f"{address} chain {chain}: {reply.blocks_checked} blocks, "
                    f"{reply.transactions_checked} transactions, {'ok' if reply.ok else 'FINDINGS'}"
                )
    for problem in problems:
        print(problem)
    if unreachable and unreachable == len(stubs) * chains:
        return EXIT_UNREACHABLE
    return EXIT_OK if not problems else EXIT_FAILED
