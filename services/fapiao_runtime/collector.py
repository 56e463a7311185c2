"""CPython's cycle collector in long-running service processes: fewer full pauses, and their durations measured.

A full (generation 2) collection stops the process while it walks every object the collector tracks.
About 50,000 of a service's objects are its imported modules, classes, functions and wiring, which
live as long as the process and never become garbage. At a paced 1,000 tx/s each of the four
validators ran one full collection in a 15-second window, of 50 to 101 ms, doing nothing else
meanwhile (docs/benchmarks.md). `freeze_startup_heap()`, called once a service is wired, collects once
and then moves every surviving object to the permanent generation (`gc.freeze`), which collections
skip. Objects created later are collected as before; an object of the frozen start-up heap that later
becomes cyclic garbage is not reclaimed, a bounded cost (the start-up heap does not grow).

`watch_pauses()` times every collection; `drain_pauses()` moves the timings into
`fapiao_gc_pause_seconds{generation}`, so a tail latency can be checked against the collector. The
callback only appends to a list: a collection can start inside any allocation, including one made by
code that holds prometheus_client's lock (a single non-reentrant lock per process in multiprocess
mode), so observing the histogram from the callback could deadlock the process. Services drain with
their gauge refresh (`fapiao_runtime.service`), the gateway on its own timer.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from prometheus_client import Histogram

GC_PAUSE = Histogram(
    "fapiao_gc_pause_seconds",
    "Duration of each CPython garbage collection, by generation",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
# At most this many timings wait for a drain; beyond it new ones are dropped (a process not draining).
MAX_PENDING = 10_000

_started: list[float] = []
_pending: list[tuple[int, float]] = []  # (generation, seconds), appended by the callback only


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        seconds = time.perf_counter() - _started.pop()
        if len(_pending) < MAX_PENDING:  # never removes: drain_pauses takes items from the front
            _pending.append((info["generation"], seconds))


def watch_pauses() -> None:
    """Time every collection from now on (idempotent); `drain_pauses` publishes the timings."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def drain_pauses() -> int:
    """Observe the collections timed since the last drain in GC_PAUSE; return how many there were."""
    taken = _pending[:]
    del _pending[: len(taken)]  # the callback may append meanwhile: only what was copied is removed
    for generation, seconds in taken:
        GC_PAUSE.labels(generation=str(generation)).observe(seconds)
    return len(taken)


async def drain_every(interval_s: float = 5.0) -> None:
    """Drain the timings every `interval_s` until cancelled (for processes without a gauge refresh)."""
    while True:
        drain_pauses()
        await asyncio.sleep(interval_s)


def freeze_startup_heap() -> int:
    """Collect, then exempt every surviving object from future collections; return how many were frozen.

    Call once, when the process has imported and wired everything it keeps for its lifetime.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
