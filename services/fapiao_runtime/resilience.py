"""Riding out a lost database or broker: back-off, waiting for dependencies at start-up, restartable tasks.

A lost dependency (`errors.unavailable_cause`: the database, the Kafka broker, an upstream service) is
not a defect: the work is retried with capped exponential back-off and jitter, logged once per outage
(one warning line, no traceback per retry). Any other exception is a defect and is raised, so the
process stops and its supervisor restarts it.

FAPIAO_STARTUP_DEADLINE_S (default 120): how long start-up waits for the database and the broker
before the process exits non-zero with a message naming what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fapiao_runtime.errors import unavailable_cause

log = logging.getLogger(__name__)
T = TypeVar("T")

STARTUP_DEADLINE_ENV = "FAPIAO_STARTUP_DEADLINE_S"
DEFAULT_STARTUP_DEADLINE_S = 120.0


class Backoff:
    """Capped exponential back-off with jitter: the n-th delay is drawn from [d/2, d], d = min(cap, first * 2**n).

    The jitter keeps the processes that lost one database from reconnecting in lock-step.
    """

    def __init__(self, first_s: float = 0.2, cap_s: float = 10.0, rng: Callable[[], float] = random.random) -> None:
        assert 0 < first_s <= cap_s
        self.first_s = first_s
        self.cap_s = cap_s
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.first_s * 2 ** min(self._attempt, 30))
        self._attempt += 1
        return float(ceiling * (0.5 + 0.5 * self._rng()))

    def reset(self) -> None:
        self._attempt = 0


class DependencyTimeout(RuntimeError):
    """A dependency stayed unavailable past the start-up deadline."""


def startup_deadline_s() -> float:
    """FAPIAO_STARTUP_DEADLINE_S as a positive number of seconds (ValueError when it is not one)."""
    raw = os.environ.get(STARTUP_DEADLINE_ENV, "").strip()
    if not raw:
        return DEFAULT_STARTUP_DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{STARTUP_DEADLINE_ENV} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < 86_400:
        raise ValueError(f"{STARTUP_DEADLINE_ENV} must be between 0 and 86400 seconds, got {raw!r}")
    return value


async def _sleep_or_stop(delay_s: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(delay_s)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)


async def wait_for_dependency(
    step: str,
    attempt: Callable[[], Awaitable[T]],
    deadline: float,
    *,
    backoff: Backoff | None = None,
    stop: asyncio.Event | None = None,
) -> T:
    """`attempt()`, retried with back-off while it fails for a lost dependency, until `deadline`
    (time.monotonic()). One warning when the first attempt fails and one line when it succeeds after
    waiting; DependencyTimeout past the deadline; any other exception is raised at once."""
    backoff = backoff or Backoff(0.25, 5.0)
    waited_since: float | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            result = await attempt()
        except Exception as exc:
            cause = unavailable_cause(exc)
            if cause is None:
                raise
            now = time.monotonic()
            if stop is not None and stop.is_set():
                raise DependencyTimeout(f"stopped while waiting for {step}: the {cause} is unavailable") from exc
            if now >= deadline:
                raise DependencyTimeout(
                    f"start-up gave up on {step} after {attempts} attempts: the {cause} is unavailable ({exc!r});"
                    f" waited up to {STARTUP_DEADLINE_ENV}"
                ) from exc
            if waited_since is None:
                waited_since = now
                log.warning(
                    "waiting for a dependency at start-up; retrying with back-off",
                    extra={"step": step, "dependency": cause, "error": repr(exc)[:300]},
                )
            await _sleep_or_stop(min(backoff.next_delay(), max(0.0, deadline - now)), stop)
            continue
        if waited_since is not None:
            log.info(
                "dependency available",
                extra={"step": step, "attempts": attempts, "waited_s": round(time.monotonic() - waited_since, 1)},
            )
        return result


async def keep_running(
    name: str,
    run: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    backoff: Backoff | None = None,
    settle_s: float = 5.0,
    lost: Callable[[], Awaitable[str | None]] | None = None,
) -> None:
    """Run the background task `run()` until `stop`; when it fails for a lost dependency, run it again
    after a back-off, so the task rides out the outage. `run` must resume from durable state (the
    database, committed offsets), as after a restart of the process.

    Logged once per outage: a warning when the task first fails, then (once a restarted run lasted
    `settle_s` without failing) one line that it resumed. An exception that is not a lost dependency is
    raised: it is a defect, and the process stops so that its supervisor restarts it. `lost()` names a
    dependency that is down right now, if any: a failure unclassified by `unavailable_cause` that comes
    with a lost dependency (asyncpg reports a connection dropped mid-statement as an InternalClientError)
    counts as that dependency's loss.
    """
    backoff = backoff or Backoff(0.2, 10.0)
    outage: str | None = None
    failures = 0
    while not stop.is_set():
        task = asyncio.ensure_future(run())
        try:
            if outage is not None:
                done, _ = await asyncio.wait({task}, timeout=settle_s)
                if not done:
                    log.info("background task resumed", extra={"task": name, "dependency": outage, "retries": failures})
                    outage, failures = None, 0
                    backoff.reset()
            await task
            return
        except asyncio.CancelledError:
            task.cancel()
            raise
        except Exception as exc:
            cause = unavailable_cause(exc)
            if lost is not None and cause in (None, "upstream"):  # a refused connection: to what?
                cause = await lost() or cause
            if cause is None:
                raise
            if stop.is_set():
                return
            failures += 1
            if outage is None:
                outage = cause
                log.warning(
                    "background task lost a dependency; retrying with back-off",
                    extra={"task": name, "dependency": cause, "error": repr(exc)[:300]},
                )
            else:
                log.debug("background task still failing", extra={"task": name, "error": repr(exc)[:300]})
        await _sleep_or_stop(backoff.next_delay(), stop)
