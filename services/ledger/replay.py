"""Where a restarted validator starts re-reading the signature topic.

The signature topic is kept forever, so re-reading it from offset 0 at every start would cost a restart
one Ed25519 check per signature ever published (four per block). A record need not be read again once
what it brought is stored: the signatures of a block together with the finality they complete, a
signature that arrived after finality once its batch is written, our own signature once its block is
stored (and final). Until then the record's offset holds the replay point of its partition back.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Hashable


class ReplayPoint:
    """Per partition of the signature topic, the lowest offset a restart must read again.

    Records are held under a token (a block's (chain, height), or a batch of late signatures) and
    released together when the write that stores their effect has committed. `positions(excluding)`
    is the point as it will be once the write releasing `excluding` commits, so it can be stored in
    that same statement.
    """

    def __init__(self) -> None:
        self._read: dict[int, int] = {}  # partition -> next offset to read
        self._first: dict[Hashable, dict[int, int]] = {}  # token -> partition -> its first held offset
        # partition -> (offset, seq, token); entries of released tokens are dropped when they reach the
        # top, or all at once when they outnumber the live ones (one token can be held for long).
        self._heaps: dict[int, list[tuple[int, int, Hashable]]] = {}
        self._entries = 0
        self._live = 0
        self._seq = 0  # tie-breaker: tokens need not be comparable

    def start(self, partition: int, offset: int) -> None:
        """Reading of `partition` starts at `offset`."""
        self._read[partition] = offset

    def advance(self, partition: int, next_offset: int) -> None:
        """Every record of `partition` before `next_offset` has been read (and is held if still needed)."""
        if next_offset > self._read.get(partition, 0):
            self._read[partition] = next_offset

    def hold(self, token: Hashable, partition: int, offset: int) -> None:
        firsts = self._first.setdefault(token, {})
        if partition in firsts:
            if firsts[partition] <= offset:
                return
        else:
            self._live += 1
        firsts[partition] = offset
        self._seq += 1
        self._entries += 1
        heapq.heappush(self._heaps.setdefault(partition, []), (offset, self._seq, token))
        if self._entries > 2 * self._live + 1024:
            self._rebuild()

    def held(self, token: Hashable) -> bool:
        return token in self._first

    def release(self, tokens: Collection[Hashable]) -> None:
        for token in tokens:
            self._live -= len(self._first.pop(token, {}))

    def _rebuild(self) -> None:
        self._heaps = {}
        for token, firsts in self._first.items():
            for partition, offset in firsts.items():
                self._seq += 1
                self._heaps.setdefault(partition, []).append((offset, self._seq, token))
        for heap in self._heaps.values():
            heapq.heapify(heap)
        self._entries = self._live

    def positions(self, excluding: Collection[Hashable] = ()) -> dict[int, int]:
        """Per partition read so far, the lowest offset held by a token not in `excluding`."""
        points = dict(self._read)
        for partition, heap in self._heaps.items():
            skipped = []
            while heap:
                offset, _, token = heap[0]
                if self._first.get(token, {}).get(partition) != offset:
                    heapq.heappop(heap)  # released, or superseded by a lower offset: gone for good
                    self._entries -= 1
                elif token in excluding:
                    skipped.append(heapq.heappop(heap))
                else:
                    break
            if heap and heap[0][0] < points.get(partition, heap[0][0] + 1):
                points[partition] = heap[0][0]
            for entry in skipped:
                heapq.heappush(heap, entry)
        return points
