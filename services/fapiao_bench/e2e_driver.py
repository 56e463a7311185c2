"""Child process of the e2e benchmark: start a private stack, drive invoices through it, stop it.

Prints progress on stderr and one JSON line of figures on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field

import aiohttp
from aiokafka import AIOKafkaConsumer
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_api
from fapiao.invoicing.v1 import invoice_minting_service_pb2_grpc as minting_grpc
from fapiao.invoicing.v1 import invoice_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao.payments.v1 import payment_intake_service_pb2 as intake_api
from fapiao.payments.v1 import payment_intake_service_pb2_grpc as intake_grpc
from fapiao_cli import clients
from fapiao_cli.commands.merchant import register_merchant
from fapiao_cli.local import gateway_url
from fapiao_cli.platform import PaymentPlatform
from fapiao_cli.progress import ProgressBar
from fapiao_runtime import event_loop
from fapiao_runtime.envelope import parse_envelope, unpack
from fapiao_runtime.tax_id import uscc_check_char
from fapiao_runtime.topics import LEDGER_RESULTS

from fapiao_bench.cpu import CpuMeter, children_of
from fapiao_bench.stats import percentile

# Invoices in flight in the closed loop. By Little's law a closed loop delivers at most
# CONCURRENCY / latency, so it must exceed the target rate times the latency under load (seconds on a
# saturated 2-core machine): fewer in flight cap the figure below the stack's capacity, and 2,048 bring
# time-outs (docs/benchmarks.md, "Where the CPU of an invoice goes").
CONCURRENCY = int(os.environ.get("FAPIAO_BENCH_E2E_CONCURRENCY", "1024"))
MERCHANTS = 8


@dataclass
class Tracker:
    """Commit times of ISSUE results by invoice id, read from ledger.results.v1."""

    committed: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)

    def wait(self, invoice_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if invoice_id in self.committed:
            future.set_result(self.committed[invoice_id])
        else:
            self.waiters[invoice_id] = future
        return future

    async def follow(self, bootstrap: str, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            LEDGER_RESULTS.name, bootstrap_servers=bootstrap, auto_offset_reset="latest", enable_auto_commit=False
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.monotonic()
                for records in batch.values():
                    for record in records:
                        result = unpack(parse_envelope(record.value), ledger_pb2.TransactionResult)
                        if result.type != ledger_pb2.TRANSACTION_TYPE_ISSUE or result.invoice_id in self.committed:
                            continue
                        self.committed[result.invoice_id] = now
                        waiter = self.waiters.pop(result.invoice_id, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(now)
        finally:
            await consumer.stop()


@dataclass
class Stubs:
    """One channel per service for the whole run, as a real client keeps (not one per call)."""

    intake: intake_grpc.PaymentIntakeServiceStub = field(default_factory=clients.intake)
    minting: minting_grpc.InvoiceMintingServiceStub = field(default_factory=clients.minting)


async def one_invoice(
    platform: PaymentPlatform,
    session: aiohttp.ClientSession,
    tracker: Tracker,
    buyer: invoice_pb2.Party,
    stubs: Stubs,
) -> float:
    """Latency in seconds from the webhook POST to the final ISSUE result."""
    started = time.monotonic()
    paid = await platform.pay(session, 100 + secrets.randbelow(100_000))
    if not paid.accepted:
        raise RuntimeError(f"payment refused: {paid.status} {paid.answer}")
    merchant_id = platform.credentials.merchant_id
    payment = (
        await stubs.intake.GetPayment(
            intake_api.GetPaymentRequest(merchant_id=merchant_id, transaction_id=paid.transaction_id), timeout=10
        )
    ).payment
    # The service holds the call until the payment's offer commits (no polling).
    offer = await stubs.minting.GetClaimOfferByPayment(
        minting_api.GetClaimOfferByPaymentRequest(
            merchant_id=merchant_id, payment_id=payment.payment_id, omit_qr_code=True, wait_ms=10_000
        ),
        timeout=15,
    )
    claim = await stubs.minting.ClaimInvoice(
        minting_api.ClaimInvoiceRequest(
            claim_token=clients.claim_token_of(offer.claim_url), buyer=buyer, idempotency_key=secrets.token_hex(16)
        ),
        timeout=10,
    )
    committed_at = await asyncio.wait_for(tracker.wait(claim.invoice.body.invoice_id), timeout=60)
    return committed_at - started


async def drive(
    platforms: list[PaymentPlatform], tracker: Tracker, stubs: Stubs, seconds: int, rate: float | None
) -> list[float]:
    """Closed loop with CONCURRENCY workers (rate None) or open loop at `rate` per second."""
    latencies: list[float] = []
    failures = 0
    buyer = invoice_pb2.Party(kind=invoice_pb2.PARTY_KIND_PERSON, name="压测用户")
    deadline = time.monotonic() + seconds
    label = "e2e closed loop" if rate is None else f"e2e at {rate:.0f}/s"
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15), connector=connector) as session:
        with ProgressBar(seconds, label) as bar:
            ticker_stop = asyncio.Event()

            async def ticker() -> None:
                while not ticker_stop.is_set():
                    await asyncio.sleep(1)
                    bar.advance()

            tick = asyncio.ensure_future(ticker())

            async def guarded(i: int) -> None:
                nonlocal failures
                try:
                    latencies.append(await one_invoice(platforms[i % len(platforms)], session, tracker, buyer, stubs))
                except Exception as exc:
                    failures += 1
                    if failures <= 3:
                        print(f"invoice failed: {exc!r}", file=sys.stderr)

            if rate is None:

                async def worker(w: int) -> None:
                    i = w
                    while time.monotonic() < deadline:
                        await guarded(i)
                        i += CONCURRENCY

                await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
            else:
                tasks = []
                started = time.monotonic()
                i = 0
                while time.monotonic() < deadline:
                    delay = started + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.ensure_future(guarded(i)))
                    i += 1
                await asyncio.gather(*tasks)
            ticker_stop.set()
            await tick
    print(f"{label}: {len(latencies)} committed, {failures} failed", file=sys.stderr)
    return latencies


def stack_processes() -> dict[str, list[int]]:
    """Pids of the running local stack by component (the load generator is this process)."""
    from fapiao_stack import stack
    from fapiao_stack.paths import RUN_DIR
    from fapiao_stack.services import local_services

    def pid_of(name: str) -> list[int]:
        """The process of `name` and its children (a service run as several workers: all of them)."""
        pid_file = stack.PID_DIR / f"{name}.pid"
        if not pid_file.exists():
            return []
        pid = int(pid_file.read_text())
        return [pid, *children_of(pid)]

    groups: dict[str, list[int]] = {}
    for spec in local_services():
        group = "ledger_validators" if spec.name.startswith("ledger") else spec.name
        groups.setdefault(group, []).extend(pid_of(spec.name))
    groups["kafka"] = pid_of("kafka")
    postmaster_file = RUN_DIR / "postgres" / "postmaster.pid"
    if postmaster_file.exists():
        postmaster = int(postmaster_file.read_text().split()[0])
        groups["postgres"] = [postmaster, *children_of(postmaster)]
    groups["load_generator"] = [os.getpid()]
    return groups


async def main_async(seconds: int, bootstrap: str) -> dict[str, float]:
    platforms = []
    for m in range(MERCHANTS):
        merchant_id = f"17{secrets.randbelow(10**8):08d}"
        body = f"91440300MA5E{m:05d}"
        await asyncio.to_thread(register_merchant, merchant_id, f"压测商户{m}", body + uscc_check_char(body), "44")
        platforms.append(PaymentPlatform.for_merchant(merchant_id, gateway_url()))
    tracker = Tracker()
    stop = asyncio.Event()
    follower = asyncio.ensure_future(tracker.follow(bootstrap, stop))
    await asyncio.sleep(1.0)
    stubs = Stubs()
    await drive(platforms, tracker, stubs, 10, None)  # warm-up: issuer keys registered, caches filled
    meter = CpuMeter(stack_processes())
    meter.start()
    closed = await drive(platforms, tracker, stubs, seconds, None)
    cpu = meter.stop()
    throughput = len(closed) / seconds
    half = max(1.0, throughput / 2)
    open_loop = await drive(platforms, tracker, stubs, max(30, seconds // 2), half)
    stop.set()
    await follower
    per_invoice = {f"e2e_cpu_ms_per_invoice_{name}": used * 1000 / max(1, len(closed)) for name, used in cpu.items()}
    return {
        **per_invoice,
        "e2e_cpu_ms_per_invoice_total": sum(per_invoice.values()),
        "e2e_invoices_per_s": throughput,
        "e2e_p99_ms": percentile(open_loop, 0.99) * 1000,
        "e2e_p50_ms": percentile(open_loop, 0.50) * 1000,
        "e2e_rate_for_p99_per_s": half,
    }


def main() -> int:
    from fapiao_cli.local import load_stack_environment
    from fapiao_stack import stack

    seconds = int(os.environ.get("FAPIAO_BENCH_E2E_SECONDS", "60"))
    try:
        endpoints = stack.up()
        load_stack_environment()
        figures = event_loop.run(main_async(seconds, endpoints.kafka_bootstrap))
    finally:
        stack.down()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
