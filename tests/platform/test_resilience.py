"""Back-off, waiting for dependencies at start-up, restartable background tasks, and a consumer that never
dead-letters a record for a lost database (pure code and fakes of the pool)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.consumer import EventConsumer
from fapiao_runtime.envelope import make_envelope
from fapiao_runtime.logs import RepeatFilter
from fapiao_runtime.resilience import (
    Backoff,
    DependencyTimeout,
    keep_running,
    startup_deadline_s,
    wait_for_dependency,
)

pytestmark = pytest.mark.unit

LOST = "background task lost a dependency; retrying with back-off"


def _fast() -> Backoff:
    return Backoff(0.001, 0.004)


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    low = Backoff(0.1, 1.0, rng=lambda: 0.0)
    assert [low.next_delay() for _ in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    high = Backoff(0.1, 1.0, rng=lambda: 1.0)
    assert [high.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    high.reset()
    assert high.next_delay() == pytest.approx(0.1)


def test_the_startup_deadline_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAPIAO_STARTUP_DEADLINE_S", raising=False)
    assert startup_deadline_s() == 120.0
    monkeypatch.setenv("FAPIAO_STARTUP_DEADLINE_S", "7.5")
    assert startup_deadline_s() == 7.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv("FAPIAO_STARTUP_DEADLINE_S", bad)
        with pytest.raises(ValueError, match="FAPIAO_STARTUP_DEADLINE_S"):
            startup_deadline_s()


async def test_a_task_that_loses_its_database_runs_again_and_the_outage_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise ConnectionRefusedError(111, "Connection refused")
        stop.set()  # the fifth run rides on until stopped

    with caplog.at_level(logging.DEBUG, logger="fapiao_runtime.resilience"):
        await asyncio.wait_for(keep_running("relay", run, stop, backoff=_fast(), settle_s=0.001), 10)
    assert runs == 5
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [LOST]
    assert warnings[0].exc_info is None and warnings[0].task == "relay"


async def test_a_defect_in_a_task_is_raised_so_the_process_stops() -> None:
    async def run() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await asyncio.wait_for(keep_running("relay", run, asyncio.Event(), backoff=_fast()), 10)


async def test_an_unclassified_failure_while_the_database_is_down_counts_as_its_loss() -> None:
    stop = asyncio.Event()
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("cannot switch to state 15; another operation (2) is in progress")
        stop.set()

    async def database_down() -> str | None:
        return "database"

    await asyncio.wait_for(keep_running("validator", run, stop, backoff=_fast(), lost=database_down), 10)
    assert runs == 2


async def test_start_up_waits_for_a_dependency_and_gives_up_at_its_deadline(caplog: pytest.LogCaptureFixture) -> None:
    attempts = 0

    async def connect() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise ConnectionRefusedError(111, "Connection refused")
        return "pool"

    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.INFO, logger="fapiao_runtime.resilience"):
        assert await wait_for_dependency("database connection", connect, loop.time() + 60, backoff=_fast()) == "pool"
    assert [r.getMessage() for r in caplog.records] == [
        "waiting for a dependency at start-up; retrying with back-off",
        "dependency available",
    ]

    async def never() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(DependencyTimeout, match="start-up gave up on kafka producer"):
        await wait_for_dependency("kafka producer", never, loop.time() + 0.05, backoff=_fast())

    async def broken() -> None:
        raise ValueError("bad DATABASE_URL")

    with pytest.raises(ValueError):
        await wait_for_dependency("database connection", broken, loop.time() + 60, backoff=_fast())


def test_a_client_library_retry_message_is_let_through_once_a_window() -> None:
    now = [0.0]
    repeat = RepeatFilter(window_s=60, clock=lambda: now[0])

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("1", "refused"), None)

    retry = "Unable connect to node with id %s: %s"
    assert repeat.filter(record("aiokafka", retry))
    assert not any(repeat.filter(record("aiokafka", retry)) for _ in range(100))
    assert repeat.filter(record("aiokafka", "Unable to update metadata from %s"))
    assert all(repeat.filter(record("fapiao_runtime.service", "health %s")) for _ in range(3))
    now[0] = 61.0
    assert repeat.filter(record("aiokafka", retry))


class _FlakyPool:
    """A pool whose first `failures` acquisitions are refused (the database is down), then work."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.statements: list[str] = []

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_FlakyPool]:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        yield self

    async def execute(self, sql: str, *args: Any) -> None:
        self.statements.append(sql)


async def test_a_consumer_never_dead_letters_a_record_for_a_lost_database() -> None:
    pool = _FlakyPool(failures=5)

    async def handler(conn: Any, envelope: Any) -> None:
        raise AssertionError("not reached: the database is down")

    consumer = EventConsumer(
        bootstrap="127.0.0.1:9",
        topics=["t"],
        group_id="g",
        pool=pool,
        handler=handler,  # type: ignore[arg-type]
    )
    records = [
        ConsumerRecord("t", 0, offset, 0, 0, None, envelope.SerializeToString(), None, 0, 0, [])
        for offset, envelope in enumerate(
            make_envelope(payments_pb2.PaymentSucceeded(), aggregate_id=f"m1:o{n}", producer="test") for n in (1, 2)
        )
    ]
    # A fetched batch of one record, and of several (applied in one transaction).
    for batch in (records[:1], records):
        with pytest.raises(ConnectionRefusedError):
            await consumer.apply(batch)
    # Not dead-lettered, not counted: the record is read again from the committed offset.
    assert consumer.dead_lettered == 0 and consumer.applied == 0
    assert not [s for s in pool.statements if "dead_letters" in s]
