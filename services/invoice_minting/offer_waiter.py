"""Long polling for claim offers: wake GetClaimOfferByPayment callers when their payment's offer commits.

The payments consumer NOTIFYs OFFERS_CHANNEL with the payment id in the transaction that creates the
offer, so the notification arrives only once the offer is visible, on every replica. One listening
connection per process fans notifications out to the waiting calls. Notifications are only a hint:
a waiter re-reads the offer after each wake-up and at least every FALLBACK_POLL_S, so a lost listener
connection slows waiters down but never strands them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from fapiao_runtime.db import CONNECT_TIMEOUT_S
from fapiao_runtime.resilience import Backoff

from invoice_minting.store import OFFERS_CHANNEL

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_WAIT_S = 10.0
FALLBACK_POLL_S = 0.5


class OfferWaiter:
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Keep one LISTEN connection open until `stop`, reconnecting after failures with back-off (one
        warning per outage; waiters poll meanwhile)."""
        backoff = Backoff(0.5, 10.0)
        failing = False
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._database_url, timeout=CONNECT_TIMEOUT_S)
                await conn.add_listener(OFFERS_CHANNEL, self._on_notify)
                if failing:
                    log.info("offer listener connected again")
                    failing = False
                    backoff.reset()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())  # type: ignore[misc]
                stopper = asyncio.ensure_future(stop.wait())
                loser = asyncio.ensure_future(lost.wait())
                await asyncio.wait({stopper, loser}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                loser.cancel()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if not failing:
                    failing = True
                    log.warning("offer listener connection failed; waiters poll meanwhile", extra={"err": repr(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff.next_delay())
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payment_id: object) -> None:
        for future in self._waiters.pop(str(payment_id), ()):
            if not future.done():
                future.set_result(None)

    async def wait_for(self, payment_id: str, fetch: Callable[[], Awaitable[T | None]], timeout_s: float) -> T | None:
        """`fetch()` as soon as it returns something, or None once `timeout_s` (capped) has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        while True:
            # Register before reading, so a notification between the read and the wait is not missed.
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(payment_id, set()).add(future)
            try:
                found = await fetch()
                remaining = deadline - loop.time()
                if found is not None or remaining <= 0:
                    return found
                await asyncio.wait({future}, timeout=min(remaining, FALLBACK_POLL_S))
            finally:
                waiting = self._waiters.get(payment_id)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[payment_id]
