"""The cycle collector's settings for service processes (fapiao_runtime.collector)."""

from __future__ import annotations

import gc
import weakref

import pytest
from fapiao_runtime import collector

pytestmark = pytest.mark.unit


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _collections(generation: str) -> float:
    samples = collector.GC_PAUSE.labels(generation=generation).collect()[0].samples
    return next(s.value for s in samples if s.name.endswith("_count"))


def test_every_collection_is_timed_by_generation() -> None:
    collector.watch_pauses()
    collector.watch_pauses()  # idempotent: a collection is still timed once
    collector.drain_pauses()
    before = _collections("2")
    gc.collect()
    assert _collections("2") == before  # timed, not yet observed (never from inside the collection)
    assert collector.drain_pauses() >= 1
    assert _collections("2") == before + 1
    assert collector.drain_pauses() == 0


def test_the_frozen_start_up_heap_is_skipped_and_later_garbage_is_still_collected() -> None:
    kept = Node()
    kept.other = kept  # a live cycle from "start-up"
    try:
        frozen = collector.freeze_startup_heap()
        assert frozen > 1000 and gc.get_freeze_count() == frozen
        assert not any(o is kept for o in gc.get_objects())  # in the permanent generation, never walked

        garbage = Node()
        garbage.other = garbage
        gone = weakref.ref(garbage)
        del garbage  # cyclic garbage made after the freeze: only the collector can free it
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())


def test_a_collection_never_observes_a_metric_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection can start inside code holding prometheus_client's (non-reentrant) lock: the
    callback must only record, or the process would deadlock."""
    called: list[str] = []

    class Recording:
        def labels(self, **labels: str) -> Recording:
            called.append(labels["generation"])
            return self

        def observe(self, seconds: float) -> None:
            return None

    monkeypatch.setattr(collector, "GC_PAUSE", Recording())
    collector.watch_pauses()
    collector.drain_pauses()
    called.clear()
    gc.collect()
    assert called == []
    collector.drain_pauses()
    assert "2" in called
