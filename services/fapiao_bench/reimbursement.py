"""Reimbursement benchmark: LockInvoice over mutual TLS against the real service, 4 validators, Kafka, PostgreSQL.

Every lock is on a distinct, freshly issued personal invoice (no contention), from 8 organisations over
8 connections. The RPC returns only once the ledger's block holding the LOCK is final by quorum, so
these figures include the whole path: authorization, the idempotency row and outbox in PostgreSQL, the
relay to Kafka, 4 validators executing and signing, and the result coming back.

reimburse_locks_per_s: closed loop, LOCKS_THROUGHPUT locks with IN_FLIGHT concurrent RPCs.
reimburse_lock_p99_ms (and p50): open loop, locks started at a steady PACED_RATE_PER_S for PACED_SECONDS;
latency from the call to its answer. reimburse_paced_offered_per_s is the rate actually offered and
reimburse_paced_failed the locks refused under overload (not included in the percentiles).
reimburse_lock_p99_ms_at_30_per_s (and p50): the same open loop at a rate this machine sustains.
"""

from __future__ import annotations

import asyncio
import collections
import time

import grpc
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import reason_of
from fapiao_stack.devstack import Pki, RealStack, new_tax_id
from fapiao_stack.harness import StackUnderTest

from fapiao_bench.stats import percentile

ORGANISATIONS = 8
LOCKS_THROUGHPUT = 1_500
IN_FLIGHT = 256
PACED_RATE_PER_S = 500
PACED_SECONDS = 4
# A rate this 2-core machine sustains, to show latency when the system is not saturated.
SUSTAINABLE_RATE_PER_S = 30
SUSTAINABLE_SECONDS = 5
ISSUE_CHUNK = 500


async def run(env: StackUnderTest) -> dict[str, float]:
    pki = Pki()
    real = RealStack(env, pki)
    await real.start()
    channels: list[grpc.aio.Channel] = []
    try:
        orgs = [new_tax_id() for _ in range(ORGANISATIONS)]
        for org in orgs:
            await real.add_org(org)
        needed = LOCKS_THROUGHPUT + PACED_RATE_PER_S * PACED_SECONDS + SUSTAINABLE_RATE_PER_S * SUSTAINABLE_SECONDS + 50
        numbers: list[str] = []
        while len(numbers) < needed:
            numbers += await real.issue([None] * min(ISSUE_CHUNK, needed - len(numbers)))
        channels = [real.channel(org) for org in orgs]
        stubs = [pki.stub(c) for c in channels]
        sequence = iter(range(len(numbers)))
        failures: collections.Counter[str] = collections.Counter()

        async def lock() -> float | None:
            """Latency of one lock, retried with the same key while the outcome is pending; None if refused."""
            i = next(sequence)
            request = rpb.LockInvoiceRequest(invoice_number=numbers[i], idempotency_key=f"bench-{i}")
            started = time.perf_counter()
            for _ in range(3):
                try:
                    reply = await stubs[i % ORGANISATIONS].LockInvoice(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        continue  # the idempotency key makes the retry return the first outcome
                    failures[f"{exc.code().name}:{reason_of(exc)}"] += 1
                    return None
                assert reply.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED
                return time.perf_counter() - started
            return None

        for _ in range(50):  # warm up connections, caches and the validators' first blocks
            await lock()

        print("[reimbursement] warmed up", flush=True)
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def gated() -> float | None:
            async with gate:
                return await lock()

        started = time.perf_counter()
        done = await asyncio.gather(*(gated() for _ in range(LOCKS_THROUGHPUT)))
        locks_per_s = sum(1 for d in done if d is not None) / (time.perf_counter() - started)
        print(f"[reimbursement] throughput {locks_per_s:.0f} locks/s", flush=True)

        async def paced(rate_per_s: int, seconds: float) -> tuple[list[float | None], float]:
            """Open loop: start a lock every 1/rate seconds whatever the answers do (no coordinated omission)."""
            tasks: list[asyncio.Task[float | None]] = []
            begin = time.perf_counter()
            for n in range(int(rate_per_s * seconds)):
                delay = begin + n / rate_per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(lock()))
            offered = len(tasks) / (time.perf_counter() - begin)
            return list(await asyncio.gather(*tasks)), offered

        light, _ = await paced(SUSTAINABLE_RATE_PER_S, SUSTAINABLE_SECONDS)
        light_ms = [s * 1000 for s in light if s is not None]
        answers, offered = await paced(PACED_RATE_PER_S, PACED_SECONDS)
        if failures:
            print(f"[reimbursement] refused locks: {dict(failures)}", flush=True)
        latencies_ms = [s * 1000 for s in answers if s is not None]
        if not latencies_ms:
            raise RuntimeError("every paced lock failed")
        return {
            "reimburse_locks_per_s": locks_per_s,
            "reimburse_lock_p50_ms": percentile(latencies_ms, 0.5),
            "reimburse_lock_p99_ms": percentile(latencies_ms, 0.99),
            "reimburse_paced_offered_per_s": offered,
            "reimburse_paced_failed": float(len(answers) - len(latencies_ms)),
            "reimburse_throughput_failed": float(sum(1 for d in done if d is None)),
            f"reimburse_lock_p50_ms_at_{SUSTAINABLE_RATE_PER_S}_per_s": percentile(light_ms, 0.5),
            f"reimburse_lock_p99_ms_at_{SUSTAINABLE_RATE_PER_S}_per_s": percentile(light_ms, 0.99),
        }
    except Exception:
        if real.service is not None:
            print(real.service.log_text()[-4000:], flush=True)
        raise
    finally:
        for channel in channels:
            await channel.close()
        await real.stop()
