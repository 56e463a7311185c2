"""Group concurrent RecordPayment calls into one statement (payments and their outbox rows) per batch.

Natural batching: no linger timer; while one batch is in the database, new requests queue up and
form the next batch, so latency stays one round trip at low load and throughput grows with load.
Bounded: at most `max_pending` queued commands (then RESOURCE_EXHAUSTED), `max_batch` per
transaction, `workers` transactions in flight. A batch that fails as a whole is retried one command
at a time, so one bad command never fails its neighbours; a batch that fails for a lost database
fails all its commands at once (their callers get UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from fapiao_runtime.errors import FapiaoError, ResourceExhausted, unavailable_cause

from payment_intake import metrics
from payment_intake.domain import RecordPayment
from payment_intake.store import PaymentOutcome, record_payments

log = logging.getLogger(__name__)

_Item = tuple[RecordPayment, str | None, "asyncio.Future[PaymentOutcome | FapiaoError]"]


class PaymentBatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 200,
        workers: int = 2,
        max_pending: int = 10_000,
        linger_ms: float = 1.0,
    ):
        assert 0 < max_batch <= 1000 and 0 < workers <= 32 and 0 < max_pending <= 100_000 and 0 <= linger_ms <= 50
        self._pool = pool
        self._max_batch = max_batch
        self._linger_s = linger_ms / 1000
        self._workers = workers
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_pending)
        self._busy = 0
        self._last_batch = 1

    async def submit(self, cmd: RecordPayment, nonce: str | None = None) -> PaymentOutcome:
        """Record one validated payment (claiming the webhook `nonce` with it); returns once its
        transaction committed. Raises FapiaoError."""
        future: asyncio.Future[PaymentOutcome | FapiaoError] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((cmd, nonce, future))
        except asyncio.QueueFull:
            raise ResourceExhausted("INTAKE_OVERLOADED", "too many payments in flight; retry later") from None
        outcome = await future
        if isinstance(outcome, FapiaoError):
            raise outcome
        return outcome

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop`; then finish what is queued (bounded by 5 s) and return."""
        workers = [asyncio.ensure_future(self._work()) for _ in range(self._workers)]
        try:
            await stop.wait()
            deadline = time.monotonic() + 5.0
            while (self._busy or not self._queue.empty()) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._linger_s and self._last_batch > 1 and self._queue.qsize() < self._max_batch - 1:
                # Under load a millisecond gathers many more commands per transaction (fewer round
                # trips per payment). Only lingers while batching pays off: when the previous batch
                # was a single command, load is low and latency matters more.
                await asyncio.sleep(self._linger_s)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._last_batch = len(batch)
            self._busy += 1
            try:
                await self._flush(batch)
            finally:
                self._busy -= 1

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            commands = [cmd for cmd, _, _ in batch]
            nonces = [nonce for _, nonce, _ in batch]
            async with self._pool.acquire() as conn:
                if any(nonces):
                    async with conn.transaction():
                        outcomes = await record_payments(conn, commands, nonces)
                else:
                    # One statement writes the payments with their events: no BEGIN / COMMIT round trips.
                    outcomes = await record_payments(conn, commands)
        except Exception as exc:
            lost = unavailable_cause(exc) is not None
            if len(batch) > 1 and not lost:
                log.warning("payment batch failed; retrying one by one", extra={"size": len(batch), "error": repr(exc)})
                for item in batch:
                    await self._flush([item])
                return
            # A lost database fails every command of the batch alike (each caller gets UNAVAILABLE and
            # retries; nothing was recorded): no retry one by one, no traceback per payment.
            if not isinstance(exc, FapiaoError) and not lost:
                log.exception("payment could not be recorded")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        metrics.BATCH_SIZE.observe(len(batch))
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, FapiaoError):
                metrics.PAYMENTS.labels(outcome=outcome.reason).inc()
            else:
                metrics.PAYMENTS.labels(outcome="duplicate" if outcome.duplicate else "recorded").inc()
            if not future.done():
                future.set_result(outcome)
