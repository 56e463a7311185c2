"""A local reimbursement deployment for tests and the benchmark: a CA, 4 validator processes, the
reimbursement process behind mutual TLS, organisation certificates and invoices issued on the ledger.

A harness, not part of the service: it runs the reimbursement package's processes and migrations.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import reimbursement
from fapiao.ledger.v1 import ledger_pb2, ledger_service_pb2, ledger_service_pb2_grpc
from fapiao.reimbursement.v1 import reimbursement_service_pb2_grpc as rpb_grpc
from fapiao_runtime.db import apply_migrations, create_pool
from fapiao_runtime.invoice_ids import invoice_id_for_number
from fapiao_runtime.ledger_client import LedgerResultWaiter
from fapiao_runtime.pki import (
    IssuedCertificate,
    create_ca,
    issue_organisation_certificate,
    issue_server_certificate,
    write_pem_pair,
)
from fapiao_runtime.tax_id import uscc_check_char
from reimbursement.organisations import add_organisation

from fapiao_stack.devnet import LedgerNetwork, cancel, issue
from fapiao_stack.harness import ServiceProcess, StackUnderTest
from fapiao_stack.procs import free_port

MIGRATIONS = Path(reimbursement.__file__).parent / "migrations"


def new_tax_id() -> str:
    """A fresh (random) valid unified social credit code, with its GB 32100-2015 check character."""
    first17 = f"91440300{uuid.uuid4().int % 10**9:09d}"
    return first17 + uscc_check_char(first17)


def new_invoice_number() -> str:
    return f"2644{1}{uuid.uuid4().int % 10**15:015d}"


@dataclass
class Pki:
    ca: IssuedCertificate = field(default_factory=create_ca)
    other_ca: IssuedCertificate = field(default_factory=lambda: create_ca("Some Other CA"))
    _orgs: dict[tuple[str, bool], IssuedCertificate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server = issue_server_certificate(self.ca, "reimbursement")

    def org_cert(self, tax_id: str, *, other_ca: bool = False) -> IssuedCertificate:
        key = (tax_id, other_ca)
        if key not in self._orgs:
            self._orgs[key] = issue_organisation_certificate(
                self.other_ca if other_ca else self.ca, tax_id, f"Company {tax_id[-6:]}"
            )
        return self._orgs[key]

    def channel(self, port: int, tax_id: str | None, *, other_ca: bool = False) -> grpc.aio.Channel:
        """A mutual-TLS channel as organisation `tax_id` (None: TLS without a client certificate)."""
        if tax_id is None:
            creds = grpc.ssl_channel_credentials(root_certificates=self.ca.cert_pem)
        else:
            cert = self.org_cert(tax_id, other_ca=other_ca)
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.ca.cert_pem, private_key=cert.key_pem, certificate_chain=cert.cert_pem
            )
        return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)

    def stub(self, channel: grpc.aio.Channel) -> rpb_grpc.ReimbursementServiceStub:
        return rpb_grpc.ReimbursementServiceStub(channel)


@dataclass
class RealStack:
    stack: StackUnderTest
    pki: Pki
    net: LedgerNetwork = field(init=False)
    service: ServiceProcess | None = None
    tls_port: int = 0
    pool: asyncpg.Pool | None = None
    waiter: LedgerResultWaiter | None = None
    _validator_channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def start(self, **extra_env: str) -> None:
        self.net = LedgerNetwork(self.stack)
        await self.net.start()
        self.waiter = LedgerResultWaiter(self.stack.kafka_bootstrap, self.stack.topic_prefix, client_id="test-waiter")
        await self.waiter.start()
        self.pool = await create_pool(self.stack.database_url, "reimbursement", min_size=1, max_size=4)
        await apply_migrations(self.pool, "reimbursement", MIGRATIONS)
        pki_dir = self.stack.tmp_path / "pki"
        ca_cert, _ = write_pem_pair(self.pki.ca, pki_dir, "ca")
        cert, key = write_pem_pair(self.pki.server, pki_dir, "reimbursement")
        self.tls_port = free_port()
        endpoints = ",".join(f"127.0.0.1:{p.port}" for p in self.net.processes.values())
        env = {
            **self.net.env,
            "FAPIAO_LEDGER_ENDPOINTS": endpoints,
            "FAPIAO_REIMBURSEMENT_TLS_PORT": str(self.tls_port),
            "FAPIAO_REIMBURSEMENT_TLS_CERT_FILE": str(cert),
            "FAPIAO_REIMBURSEMENT_TLS_KEY_FILE": str(key),
            "FAPIAO_REIMBURSEMENT_CLIENT_CA_FILE": str(ca_cert),
            **extra_env,
        }
        self.service = await self.stack.start_service("reimbursement", **env)  # type: ignore[arg-type]

    async def stop(self) -> None:
        for channel in self._validator_channels:
            await channel.close()
        if self.service is not None and self.service.proc.poll() is None:  # type: ignore[attr-defined]
            self.service.terminate()
        if self.waiter is not None:
            await self.waiter.stop()
        if self.pool is not None:
            await self.pool.close()
        await self.net.stop()

    async def add_org(self, tax_id: str) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await add_organisation(conn, tax_id, f"Company {tax_id[-6:]}")

    def channel(self, tax_id: str | None, *, other_ca: bool = False) -> grpc.aio.Channel:
        return self.pki.channel(self.tls_port, tax_id, other_ca=other_ca)

    async def issue(self, buyers: list[str | None], *, forge: bool = False, total_fen: int = 11_200) -> list[str]:
        """Issue one invoice per buyer (None = a person) through the ledger; return numbers once final."""
        assert self.waiter is not None
        numbers, txs = [], []
        for buyer in buyers:
            number = new_invoice_number()
            invoice_id = invoice_id_for_number(number)
            txs.append(
                issue(self.net.issuer, invoice_id, number, total_fen, buyer or "", forge_invoice_signature=forge)
            )
            numbers.append(number)
        await self.net.submit(txs)
        results = await asyncio.gather(
            *(self.waiter.wait(ledger_pb2.TransactionBody.FromString(t.body).transaction_id, 60) for t in txs)
        )
        assert all(r.accepted for r in results), [r.rejection_reason for r in results if not r.accepted]
        return numbers

    async def cancel(self, number: str) -> None:
        assert self.waiter is not None
        state = (await self.states(number))[0]
        tx = cancel(self.net.issuer, state.invoice_id)
        await self.net.submit([tx])
        result = await self.waiter.wait(ledger_pb2.TransactionBody.FromString(tx.body).transaction_id, 30)
        assert result.accepted, result.rejection_reason
        await self.final_everywhere(number, ledger_pb2.INVOICE_LEDGER_STATUS_CANCELLED)

    async def final_everywhere(
        self, number: str, status: ledger_pb2.InvoiceLedgerStatus.ValueType, timeout_s: float = 30.0
    ) -> None:
        """Wait until every validator serves a final receipt leaving the invoice in `status`: a result is
        published once a quorum signed its block, and a validator outside that quorum may still answer
        with the previous receipt for a moment."""
        async with asyncio.timeout(timeout_s):
            while True:
                replies = await self._replies(number)
                if all(
                    ledger_pb2.TransactionResult.FromString(r.receipt.result).state.status == status for r in replies
                ):
                    return
                await asyncio.sleep(0.05)

    async def states(self, number: str) -> list[ledger_pb2.InvoiceState]:
        """The invoice's state on every validator (one long-lived channel per validator)."""
        return [r.state for r in await self._replies(number)]

    async def _replies(self, number: str) -> list[ledger_service_pb2.GetInvoiceStateResponse]:
        if not self._validator_channels:
            self._validator_channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in self.net.processes.values()
            ]
        replies = await asyncio.gather(
            *(
                ledger_service_pb2_grpc.LedgerServiceStub(c).GetInvoiceState(
                    ledger_service_pb2.GetInvoiceStateRequest(invoice_number=number), timeout=30
                )
                for c in self._validator_channels
            )
        )
        return list(replies)
