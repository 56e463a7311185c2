"""Gather what the checker judges: rows of the services' databases, every validator's final blocks and
AuditChain answers, and every service's health. Reads only; waits (bounded) for the system to settle."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import asyncpg
import grpc
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2
from fapiao.ledger.v1 import ledger_service_pb2_grpc as ledger_grpc
from fapiao_runtime.grpc_client import internal_channel
from fapiao_runtime.topics import LEDGER_TRANSACTIONS

from fapiao_faults.checker import LedgerResult, Observations
from fapiao_faults.system import System

RED_LETTER_KIND = 2


async def database_facts(database_url: str, merchant_id: str, seen: Observations) -> None:
    """payment_intake's payments and invoice_minting's claim offers and invoices of `merchant_id`."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT transaction_id, out_trade_no, payment_id::text AS payment_id"
            " FROM payment_intake.payments WHERE merchant_id = $1",
            merchant_id,
        )
        seen.payments, seen.payments_per_order = {}, {}
        for row in rows:
            seen.payments.setdefault((merchant_id, row["transaction_id"]), []).append(row["payment_id"])
            seen.payments_per_order[row["out_trade_no"]] = seen.payments_per_order.get(row["out_trade_no"], 0) + 1
        offers = await conn.fetch(
            "SELECT payment_id, count(*) AS n FROM invoice_minting.claim_offers WHERE merchant_id = $1"
            " GROUP BY payment_id",
            merchant_id,
        )
        seen.offers = {row["payment_id"]: int(row["n"]) for row in offers}
        invoices = await conn.fetch(
            "SELECT invoice_id::text AS invoice_id, invoice_number, payment_id, kind, status"
            " FROM invoice_minting.invoices WHERE merchant_id = $1",
            merchant_id,
        )
        seen.invoices = [
            {
                "invoice_id": row["invoice_id"],
                "invoice_number": row["invoice_number"],
                "payment_id": row["payment_id"],
                "blue": row["kind"] != RED_LETTER_KIND,
                "status": row["status"],
            }
            for row in invoices
        ]
    finally:
        await conn.close()


class ChainReader:
    """Reads one validator's final blocks of every chain, from height 1 on, a stretch per call."""

    def __init__(self, name: str, address: str, chains: int) -> None:
        self.name = name
        self.address = address
        self.chains = chains
        self.headers: dict[int, list[str]] = {chain: [] for chain in range(chains)}
        self.results: list[LedgerResult] = []
        self.reachable = True

    async def catch_up(self, idle_s: float = 2.0, limit: int = 1_000_000) -> None:
        """Read every final block past those already read (until the stream is idle for `idle_s`)."""
        async with internal_channel(self.address) as channel:
            stub = ledger_grpc.LedgerServiceStub(channel)
            answered = True
            for chain in range(self.chains):
                column = self.headers[chain]
                call = stub.StreamBlocks(
                    ledger_service_pb2.StreamBlocksRequest(chain_id=chain, from_height=len(column) + 1)
                )
                try:
                    while len(column) < limit:
                        message = await asyncio.wait_for(call.read(), timeout=idle_s)
                        if message is grpc.aio.EOF:
                            break
                        self._add(chain, message.block)  # type: ignore[union-attr]
                except TimeoutError:
                    pass  # idle: every final block so far is read
                except grpc.aio.AioRpcError:
                    answered = False
                finally:
                    call.cancel()
            self.reachable = answered

    def _add(self, chain: int, block: ledger_pb2.Block) -> None:
        header = ledger_pb2.BlockHeader.FromString(block.header)
        column = self.headers[chain]
        if header.height != len(column) + 1:
            return
        column.append(hashlib.sha256(block.header).hexdigest())
        for raw in block.results:
            result = ledger_pb2.TransactionResult.FromString(raw)
            self.results.append(
                LedgerResult(
                    transaction_id=result.transaction_id,
                    invoice_id=result.invoice_id,
                    tx_type=int(result.type),
                    accepted=result.accepted,
                    invoice_number=result.state.invoice_number,
                    lock_holder=result.state.lock_holder_tax_id,
                    chain=chain,
                    height=header.height,
                )
            )

    async def audit(self, timeout_s: float = 300.0) -> dict[int, str]:
        found: dict[int, str] = {}
        async with internal_channel(self.address) as channel:
            stub = ledger_grpc.LedgerServiceStub(channel)
            for chain in range(self.chains):
                try:
                    request = ledger_service_pb2.AuditChainRequest(chain_id=chain)
                    reply = await stub.AuditChain(request, timeout=timeout_s)
                except grpc.aio.AioRpcError as exc:
                    found[chain] = f"no answer ({exc.code().name})"
                    continue
                problems = [f"block {f.height}: {f.problem}" for f in reply.findings]
                found[chain] = "; ".join(problems) if problems or reply.ok else "not ok"
        return found


async def ledger_facts(ledgers: dict[str, str], seen: Observations, catch_up_s: float) -> None:
    """Every validator's final blocks; waits up to `catch_up_s` for validators behind to catch up."""
    readers = [ChainReader(name, address, LEDGER_TRANSACTIONS.partitions) for name, address in ledgers.items()]
    deadline = time.monotonic() + catch_up_s
    while True:
        await asyncio.gather(*(reader.catch_up() for reader in readers))
        tips = {chain: max(len(r.headers[chain]) for r in readers) for chain in range(LEDGER_TRANSACTIONS.partitions)}
        behind = [r for r in readers if any(len(r.headers[c]) < tip for c, tip in tips.items())]
        if not behind or time.monotonic() > deadline:
            break
        await asyncio.sleep(3.0)
    answering = [reader for reader in readers if reader.reachable]
    seen.unreachable = [reader.name for reader in readers if not reader.reachable]
    for reader in answering:
        seen.headers[reader.name] = reader.headers
        seen.results[reader.name] = reader.results
    audits = await asyncio.gather(*(reader.audit() for reader in readers))
    for reader, found in zip(readers, audits, strict=True):
        seen.audits[reader.name] = found


async def health_facts(system: System, seen: Observations, timeout_s: float) -> None:
    """Every service's health, waiting up to `timeout_s` for all to be SERVING (no one restarts them)."""
    names = sorted(system.endpoints().health)
    deadline = time.monotonic() + timeout_s
    while True:
        seen.health = {name: await system.service_health(name) for name in names}
        if all(state == "SERVING" for state in seen.health.values()) or time.monotonic() > deadline:
            return
        await asyncio.sleep(2.0)


async def wait_for_offers(database_url: str, merchant_id: str, payment_ids: set[str], timeout_s: float) -> None:
    """Wait (bounded) until invoice_minting made a claim offer from every acknowledged payment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            conn = await asyncpg.connect(database_url, timeout=5)
            try:
                rows = await conn.fetch(
                    "SELECT payment_id FROM invoice_minting.claim_offers WHERE merchant_id = $1", merchant_id
                )
            finally:
                await conn.close()
            if payment_ids <= {row["payment_id"] for row in rows}:
                return
        await asyncio.sleep(2.0)
