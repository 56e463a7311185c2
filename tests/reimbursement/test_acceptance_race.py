"""Acceptance: 500 invoices x 8 concurrent lockers from 8 organisations over 8 connections, real validators."""

from __future__ import annotations

import asyncio
import collections
import os
import time

import grpc
import pytest
from fapiao.ledger.v1 import ledger_pb2
from fapiao.reimbursement.v1 import reimbursement_service_pb2 as rpb
from fapiao_runtime.errors import reason_of
from fapiao_stack.devstack import RealStack
from fapiao_stack.harness import StackUnderTest

from tests.reimbursement.support import Pki, new_tax_id

pytestmark = pytest.mark.e2e

INVOICES = int(os.environ.get("FAPIAO_TEST_RACE_INVOICES", "500"))
LOCKERS = 8
IN_FLIGHT = 256


async def test_one_winner_per_invoice_then_one_close(stack: StackUnderTest, pki: Pki) -> None:
    real = RealStack(stack, pki)
    await real.start()
    orgs = [new_tax_id() for _ in range(LOCKERS)]
    channels: list[grpc.aio.Channel] = []
    try:
        for org in orgs:
            await real.add_org(org)
        numbers = await real.issue([None] * INVOICES)  # personal invoices: every organisation may try
        channels = [real.channel(org) for org in orgs]
        stubs = [pki.stub(c) for c in channels]
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def call(method, request):  # type: ignore[no-untyped-def]
            """The client contract: on DEADLINE_EXCEEDED retry with the same key (bounded) for the outcome."""
            for attempt in range(3):
                try:
                    return await method(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or attempt == 2:
                        raise

        async def lock(n: int, o: int) -> tuple[int, int, str]:
            async with gate:
                try:
                    request = rpb.LockInvoiceRequest(invoice_number=numbers[n], idempotency_key=f"lock-{n}")
                    reply = await call(stubs[o].LockInvoice, request)
                    assert reply.outcome.status == rpb.REIMBURSEMENT_STATUS_LOCKED
                    return n, o, "WON"
                except grpc.aio.AioRpcError as exc:
                    return n, o, f"{exc.code().name}:{reason_of(exc)}"

        started = time.monotonic()
        attempts = await asyncio.gather(*(lock(n, o) for n in range(INVOICES) for o in range(LOCKERS)))
        lock_s = time.monotonic() - started
        print(
            f"\n{INVOICES * LOCKERS} lock attempts in {lock_s:.1f}s ({INVOICES * LOCKERS / lock_s:.0f}/s)", flush=True
        )
        winners: dict[int, list[int]] = collections.defaultdict(list)
        for n, o, outcome in attempts:
            if outcome == "WON":
                winners[n].append(o)
            else:
                assert outcome == "FAILED_PRECONDITION:ALREADY_LOCKED", outcome
        assert all(len(winners[n]) == 1 for n in range(INVOICES)), "exactly one winner per invoice"

        # Confirmed on every validator (each applies the log independently; allow them to catch up).
        async def confirmed(n: int) -> None:
            holder = orgs[winners[n][0]]
            for _ in range(100):
                states = await real.states(numbers[n])
                if all(s.status == ledger_pb2.INVOICE_LEDGER_STATUS_LOCKED for s in states):
                    assert {s.lock_holder_tax_id for s in states} == {holder}
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"validators disagree on {numbers[n]}: {states}")

        for chunk in range(0, INVOICES, 100):
            await asyncio.gather(*(confirmed(n) for n in range(chunk, min(INVOICES, chunk + 100))))
        print(f"confirmed on every validator {time.monotonic() - started:.1f}s after the first lock", flush=True)

        # Concurrent closes: the holder twice (different keys), every other organisation once.
        async def close(n: int, o: int, key: str) -> str:
            async with gate:
                try:
                    reply = await call(
                        stubs[o].CloseInvoice, rpb.CloseInvoiceRequest(invoice_number=numbers[n], idempotency_key=key)
                    )
                    assert reply.outcome.status == rpb.REIMBURSEMENT_STATUS_CLOSED
                    return "CLOSED"
                except grpc.aio.AioRpcError as exc:
                    return f"{exc.code().name}:{reason_of(exc)}"

        calls = []
        for n in range(INVOICES):
            holder = winners[n][0]
            calls += [(n, close(n, holder, f"close-{n}-a")), (n, close(n, holder, f"close-{n}-b"))]
            calls += [(n, close(n, o, f"close-{n}-x")) for o in range(LOCKERS) if o != holder]
        outcomes = await asyncio.gather(*(c for _, c in calls))
        per_invoice: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for (n, _), outcome in zip(calls, outcomes, strict=True):
            per_invoice[n][outcome] += 1
        for n in range(INVOICES):
            counts = per_invoice[n]
            assert counts["CLOSED"] == 1, (numbers[n], counts)
            assert counts["FAILED_PRECONDITION:ALREADY_REIMBURSED"] == 1, (numbers[n], counts)
            assert counts["PERMISSION_DENIED:NOT_LOCK_HOLDER"] == LOCKERS - 1, (numbers[n], counts)
        print(f"closes done {time.monotonic() - started:.1f}s after the first lock", flush=True)
    finally:
        for channel in channels:
            await channel.close()
        await real.stop()
