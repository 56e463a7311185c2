"""Offset commits after a rebalance: a lost commit means a replay, never a stopped consumer."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from fapiao_runtime.consumer import commit_applied

pytestmark = pytest.mark.unit

A = TopicPartition("t", 0)
B = TopicPartition("t", 1)


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition], fail: Exception | None = None) -> None:
        self.assigned = assigned
        self.fail = fail
        self.committed: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail is not None:
            raise self.fail
        missing = set(offsets) - self.assigned
        if missing:  # what aiokafka does for a revoked partition
            raise IllegalStateError(f"Partition {missing} is not assigned")
        self.committed.append(dict(offsets))


async def test_commits_owned_partitions() -> None:
    consumer = FakeConsumer({A, B})
    assert await commit_applied(consumer, {A: 5, B: 7})  # type: ignore[arg-type]
    assert consumer.committed == [{A: 5, B: 7}]


async def test_revoked_partition_is_left_to_its_new_owner() -> None:
    consumer = FakeConsumer({A})
    assert not await commit_applied(consumer, {A: 5, B: 7})  # type: ignore[arg-type]
    assert consumer.committed == [{A: 5}]


async def test_everything_revoked_commits_nothing() -> None:
    consumer = FakeConsumer(set())
    assert not await commit_applied(consumer, {A: 5})  # type: ignore[arg-type]
    assert consumer.committed == []


async def test_commit_lost_to_a_rebalance_is_not_raised() -> None:
    for error in (CommitFailedError("rebalanced"), IllegalStateError("Partition t-0 is not assigned")):
        consumer = FakeConsumer({A}, fail=error)
        assert not await commit_applied(consumer, {A: 5})  # type: ignore[arg-type]
