"""A service rides out a crashed PostgreSQL (kill -9): it stays up, answers UNAVAILABLE and reports
NOT_SERVING while the database is down, serves again by itself once it is back, and loses nothing it
acknowledged. Start-up waits for the database within FAPIAO_STARTUP_DEADLINE_S."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest
from fapiao_runtime.topics import PAYMENTS
from fapiao_stack.harness import StackUnderTest, read_envelopes
from fapiao_stack.procs import free_port, spawn

from tests.payment_intake.support import Intake, new_intake, new_transaction_id, payment_request, register, stub
from tests.support.outages import eventually, health, log_lines, logged, own_postgres, stack_on

pytestmark = pytest.mark.integration


async def _payment_ids(stack: StackUnderTest, expected: int) -> list[str]:
    events = await read_envelopes(stack.kafka_bootstrap, stack.topic(PAYMENTS.name), expected=expected, timeout_s=60)
    return [e.aggregate_id for e in events]


async def test_payment_intake_rides_out_a_killed_postgres_and_loses_nothing_it_acknowledged(
    stack: StackUnderTest,
) -> None:
    async with own_postgres(stack.tmp_path) as postgres:
        own = stack_on(stack, postgres)
        intake = new_intake(own)
        await intake.restart()
        try:
            await register(own, intake.secrets_key, intake.merchant_id, intake.apiv3_key)
            async with intake.channel() as channel:
                before = await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
                assert not before.duplicate
                assert len(await _payment_ids(own, 1)) == 1  # published before the crash

                postgres.kill()
                # Every call while the database is down: UNAVAILABLE, never INTERNAL or UNKNOWN.
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
                await eventually(lambda: _is(intake, "NOT_SERVING"), 30, "health NOT_SERVING during the outage")
                # The outbox relay lost its database too: the process logs it once and stays up.
                await eventually(
                    lambda: logged(intake.process, "background task lost a dependency; retrying with back-off"),
                    30,
                    "the relay's outage line",
                )
                await asyncio.sleep(3)  # several retry rounds of the relay's back-off
                assert intake.process.proc.poll() is None, intake.process.log_text()[-3000:]  # type: ignore[attr-defined]
                outage_lines = await logged(intake.process, "background task lost a dependency; retrying with back-off")
                assert len(outage_lines) == 1 and "exc" not in outage_lines[0]

                await asyncio.to_thread(postgres.start)
                await eventually(lambda: _is(intake, "SERVING"), 60, "health SERVING after the heal")
                after = await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
                assert not after.duplicate
            # Both acknowledged payments reach the topic (the relay resumed), each once.
            published = await _payment_ids(own, 2)
            assert sorted(set(published)) == sorted(published) and len(published) == 2
            assert intake.process.proc.poll() is None  # type: ignore[attr-defined]
            await eventually(lambda: logged(intake.process, "background task resumed"), 30, "the relay's resumed line")
            assert not [line for line in log_lines(intake.process) if line.get("msg") == "unhandled error"]
        finally:
            intake.process.kill()


async def _is(intake: Intake, status: str) -> bool:
    return await health(intake.process) == status


async def test_a_service_started_while_postgres_is_down_waits_for_it_then_serves(stack: StackUnderTest) -> None:
    async with own_postgres(stack.tmp_path) as postgres:
        own = stack_on(stack, postgres)
        await asyncio.to_thread(postgres.server.stop)
        intake = new_intake(own, FAPIAO_STARTUP_DEADLINE_S="120")
        starting = asyncio.ensure_future(own.start_service("payment_intake", timeout_s=120, **intake.env()))
        try:
            # Down for several of the start-up's retries; the process must not give up meanwhile.
            await asyncio.sleep(4)
            assert not starting.done(), starting.exception() if starting.done() else None
            await asyncio.to_thread(postgres.start)
            intake.process = await starting
        finally:
            if not starting.done():
                starting.cancel()
        try:
            waits = await logged(intake.process, "waiting for a dependency at start-up; retrying with back-off")
            assert [line["step"] for line in waits] == ["database connection"]  # one line, not one per retry
            await register(own, intake.secrets_key, intake.merchant_id, intake.apiv3_key)
            async with intake.channel() as channel:
                reply = await stub(channel).RecordPayment(payment_request(intake.merchant_id, new_transaction_id()))
            assert not reply.duplicate
            assert len(await _payment_ids(own, 1)) == 1
        finally:
            intake.process.kill()


async def test_start_up_gives_up_after_its_deadline_with_a_clear_message(stack: StackUnderTest) -> None:
    async with own_postgres(stack.tmp_path) as postgres:
        own = stack_on(stack, postgres)
        await asyncio.to_thread(postgres.server.stop)
        intake = new_intake(own)
        env = own.env(FAPIAO_STARTUP_DEADLINE_S="3", FAPIAO_GRPC_PORT=str(free_port()), **intake.env())
        log_file = own.tmp_path / "intake-deadline.log"
        proc = spawn([sys.executable, "-m", "payment_intake"], log_file=log_file, env=env)
        code = await asyncio.to_thread(proc.wait, 60)
        assert code != 0
        text = log_file.read_text(errors="replace")
        assert "start-up gave up on database connection" in text, text[-3000:]
        assert [line["msg"] for line in log_lines(log_file) if line.get("level") == "ERROR"] == [
            "start-up deadline passed; exiting"
        ]
