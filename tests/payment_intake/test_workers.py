"""payment_intake as several worker processes on one pair of ports (FAPIAO_INTAKE_PROCESSES)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from fapiao.payments.v1 import payment_intake_service_pb2 as service_pb2
from fapiao_bench.cpu import children_of, cpu_seconds
from fapiao_runtime.topics import PAYMENTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from fapiao_stack.procs import free_port, listening_sockets, pid_alive

from tests.payment_intake.support import (
    new_transaction_id,
    payment_request,
    payment_resource,
    running_intake,
    stub,
)

pytestmark = pytest.mark.integration

CHANNELS = 16


def _summed(metrics_text: str, name: str, must_contain: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith(name + "{") and must_contain in line
    )


async def test_two_workers_share_both_ports_each_serves_and_a_payment_is_still_recorded_once(
    stack: StackUnderTest,
) -> None:
    metrics_port = free_port()
    async with running_intake(stack, FAPIAO_INTAKE_PROCESSES="2", FAPIAO_METRICS_PORT=str(metrics_port)) as intake:
        supervisor = intake.process.proc.pid
        workers = children_of(supervisor)
        assert len(workers) == 2
        assert listening_sockets(intake.process.port) == 2 and listening_sockets(intake.webhook_port) == 2

        # The same notification from many connections at once (gRPC channels and webhook connections,
        # spread by the kernel over both workers): one payment, one event.
        txn = new_transaction_id()
        body = intake.notification(payment_resource(intake.merchant_id, txn))
        channels = [intake.channel(own_connection=True) for _ in range(CHANNELS)]
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection, so a new worker draw, per post
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                calls = [stub(c).RecordPayment(payment_request(intake.merchant_id, txn)) for c in channels]
                calls += [intake.post(session, intake.signer.deliver(body)) for _ in range(CHANNELS)]
                results = await asyncio.gather(*calls)
            replies = [r for r in results if isinstance(r, service_pb2.RecordPaymentResponse)]
            assert all(status == 200 for status, _ in (r for r in results if isinstance(r, tuple)))
            assert len({r.payment.payment_id for r in replies}) == 1 and sum(not r.duplicate for r in replies) <= 1
            assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 1
            events = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=1, timeout_s=15)
            assert len(events) == 1

            # Distinct payments over the channels: both workers do a share of the work.
            before = {pid: cpu_seconds(pid) for pid in workers}
            payments = 1_500

            async def pay(index: int) -> None:
                client = stub(channels[index % CHANNELS])
                for n in range(index, payments, 64):
                    await client.RecordPayment(payment_request(intake.merchant_id, f"{txn[:-6]}{n:06d}"))

            await asyncio.gather(*(pay(i) for i in range(64)))
            spent = {pid: cpu_seconds(pid) - before[pid] for pid in workers}
            assert min(spent.values()) > 0.2 * sum(spent.values()), spent
        finally:
            for channel in channels:
                await channel.close()
        assert await intake.count("SELECT count(*) FROM payment_intake.payments") == 1 + payments

        # One metrics endpoint for the service: the workers' counters summed.
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
        recorded = _summed(text, "grpc_server_handled_total", "RecordPayment")
        assert recorded == CHANNELS + payments, recorded
        # Each worker froze its start-up heap after a full collection, which its pause histogram recorded.
        assert _summed(text, "fapiao_gc_pause_seconds_count", 'generation="2"') >= 2

        # SIGTERM to the service stops every worker cleanly, and the ports are free again.
        os.kill(supervisor, signal.SIGTERM)
        assert await asyncio.to_thread(intake.process.proc.wait, 30) == 0
        assert not any(pid_alive(pid) for pid in workers)
        assert listening_sockets(intake.process.port) == 0 and listening_sockets(intake.webhook_port) == 0
        # A clean stop removes its metrics directory.
        assert not list(stack.tmp_path.glob("fapiao-payment_intake-metrics-*"))


async def test_a_worker_that_dies_stops_the_service_so_it_is_restarted_whole(stack: StackUnderTest) -> None:
    async with running_intake(stack, FAPIAO_INTAKE_PROCESSES="2") as intake:
        supervisor = intake.process.proc.pid
        first, second = children_of(supervisor)
        os.kill(first, signal.SIGKILL)
        assert await asyncio.to_thread(intake.process.proc.wait, 30) != 0
        deadline = time.monotonic() + 10
        while pid_alive(second) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not pid_alive(second)
        # Restarted, it serves again on the same ports.
        await intake.restart()
        async with intake.channel() as channel:
            reply = await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
        assert not reply.duplicate


async def test_workers_do_not_outlive_a_killed_supervisor_on_the_shared_ports(stack: StackUnderTest) -> None:
    async with running_intake(stack, FAPIAO_INTAKE_PROCESSES="2") as intake:
        supervisor = intake.process.proc.pid
        workers = children_of(supervisor)
        os.kill(supervisor, signal.SIGKILL)  # the supervisor alone: its workers are told by the kernel
        await asyncio.to_thread(intake.process.proc.wait, 10)
        deadline = time.monotonic() + 20
        while any(pid_alive(pid) for pid in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not any(pid_alive(pid) for pid in workers)
        assert listening_sockets(intake.process.port) == 0 and listening_sockets(intake.webhook_port) == 0
        # The metrics directory it could not remove is in the run's directory, not the system's /tmp.
        assert list(stack.tmp_path.glob("fapiao-payment_intake-metrics-*"))


async def test_more_than_one_worker_needs_fixed_ports(stack: StackUnderTest) -> None:
    with pytest.raises(RuntimeError, match="needs fixed FAPIAO_GRPC_PORT, FAPIAO_WEBHOOK_PORT"):
        await stack.start_service(
            "payment_intake",
            FAPIAO_INTAKE_PROCESSES="2",
            FAPIAO_WEBHOOK_PORT="0",
            FAPIAO_SECRETS_KEY="00" * 32,
            FAPIAO_PAYER_HASH_KEY="11" * 32,
        )
