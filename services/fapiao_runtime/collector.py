"""CPython's cycle collector in long-running service processes: fewer full pauses, and their durations measured.

A full (generation 2) collection stops the process while it walks every object the collector tracks.
About 50,000 of a service's objects are its imported modules, classes, functions and wiring, which
live as long as the process and never become garbage. At a paced 1,000 tx/s each of the four
validators ran one full collection in a 15-second window, of 50 to 101 ms, doing nothing else
meanwhile (docs/benchmarks.md). `freeze_startup_heap()`, called once a service is wired, collects once and
then moves every surviving object to the permanent generation (`gc.freeze`), which collections skip.
Objects created later are collected as before; an object of the frozen start-up heap that later
becomes cyclic garbage is not reclaimed, a bounded cost (the start-up heap does not grow).

`watch_pauses()` records the duration of every collection in `fapiao_gc_pause_seconds` (by
generation), so a tail latency can be checked against the collector.
"""

from __future__ import annotations

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

_started: list[float] = []


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        GC_PAUSE.labels(generation=str(info["generation"])).observe(time.perf_counter() - _started.pop())


def watch_pauses() -> None:
    """Record every collection's duration in GC_PAUSE (idempotent)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def freeze_startup_heap() -> int:
    """Collect, then exempt every surviving object from future collections; return how many were frozen.

    Call once, when the process has imported and wired everything it keeps for its lifetime.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
