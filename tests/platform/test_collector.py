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
    collector.watch_pauses()  # idempotent: one callback
    assert gc.callbacks.count(collector._on_collection) == 1
    before = _collections("2")
    gc.collect()
    assert _collections("2") == before + 1


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
