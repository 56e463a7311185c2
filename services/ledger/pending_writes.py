"""What a validator has announced but not stored yet, and the waits on it.

Our signature of a block goes out before the block is stored (`coordination.Coordinator.commit`), and a
block's results are queued for publishing before its finality is stored (`finality.FinalityVotes`): the
other validators and the clients never wait for this validator's database. Whatever needs the row
(marking the block final or published, a read that did not find it) waits here until it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterable

from ledger.invariants import InvariantViolation

BlockKey = tuple[int, int]  # (chain, height)


class PendingWrites:
    """Blocks signed (our signature sent) whose store has not completed, and blocks final (results
    queued) whose finality is not stored yet."""

    def __init__(self) -> None:
        self._unstored: set[BlockKey] = set()
        self._unwritten_final: set[BlockKey] = set()
        self._changed = asyncio.Condition()  # notified when either set shrinks

    def signing(self, key: BlockKey) -> None:
        """Our signature of `key` is about to be sent; its store follows (`stored`)."""
        if key in self._unstored:
            raise InvariantViolation(f"block {key} signed twice before its store ended")
        self._unstored.add(key)

    async def stored(self, keys: Iterable[BlockKey]) -> None:
        """The blocks `keys` are in the database."""
        async with self._changed:
            self._unstored.difference_update(keys)
            self._changed.notify_all()

    def deciding_final(self, keys: Iterable[BlockKey]) -> None:
        """The finality of `keys` was decided; its write follows (`final_written`)."""
        self._unwritten_final.update(keys)

    async def final_written(self, keys: Iterable[BlockKey]) -> None:
        async with self._changed:
            self._unwritten_final.difference_update(keys)
            self._changed.notify_all()

    def is_unstored(self, key: BlockKey) -> bool:
        return key in self._unstored

    @property
    def any_unstored(self) -> bool:
        return bool(self._unstored)

    async def wait_stored(self, keys: Collection[BlockKey]) -> None:
        """Wait until none of `keys` is signed and still unstored (unbounded: the store either ends or
        fails, and a failed store ends the validator's run)."""
        if not self._unstored.intersection(keys):
            return
        async with self._changed:
            await self._changed.wait_for(lambda: not self._unstored.intersection(keys))

    async def wait_settled(self, timeout_s: float = 2.0) -> bool:
        """Wait until what is pending now (blocks signed but not stored, finality decided but not stored)
        is stored, at most timeout_s; False at once if nothing was pending. For reads that did not find
        in the database what the validator has already signed or declared final (a client may hold its
        result)."""
        unstored, unwritten = set(self._unstored), set(self._unwritten_final)
        if not unstored and not unwritten:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(
                    lambda: not unstored & self._unstored and not unwritten & self._unwritten_final
                )
        return True
