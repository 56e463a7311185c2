"""Which ids a validator's database may hold: a Bloom filter that spares the preload query.

Executing a batch needs the stored state of every invoice it names and whether each transaction id
was already claimed. Most ids in a live log are new (an ISSUE names a new invoice, every transaction
has a new id), and asking PostgreSQL about them costs a round trip per batch. A Bloom filter has no
false negatives: an id it was never given is certainly not stored, so only the ids it may hold are
looked up. False positives only cost a query, never a wrong decision.

The validator fills it at start from its database and adds every id as soon as a block that stores it
is cut (before the block is committed, which is early and therefore safe). It is sized at start for
the ids then stored plus room to grow; past that the false-positive rate, not correctness, degrades.
"""

from __future__ import annotations

import hashlib
import struct

BITS_PER_ITEM = 10  # with 7 positions per id: about 1 % false positives at capacity
MIN_CAPACITY = 1_000_000
MAX_BITS = 1 << 32  # positions are 32-bit words
_SEVEN_WORDS = struct.Struct("<7I").unpack


class PresenceFilter:
    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self._bits = min(MAX_BITS, max(64, capacity * BITS_PER_ITEM))
        self._array = bytearray((self._bits + 7) // 8)
        self.count = 0

    @classmethod
    def for_stored(cls, stored: int) -> PresenceFilter:
        """A filter for `stored` ids already in the database, with room for growth."""
        return cls(max(MIN_CAPACITY, 2 * stored))

    def _positions(self, item: str) -> tuple[int, ...]:
        # Seven independent 32-bit positions from one 28-byte digest.
        bits = self._bits
        return tuple(v % bits for v in _SEVEN_WORDS(hashlib.blake2b(item.encode(), digest_size=28).digest()))

    def add(self, item: str) -> None:
        array = self._array
        for position in self._positions(item):
            array[position >> 3] |= 1 << (position & 7)
        self.count += 1

    def __contains__(self, item: str) -> bool:
        array = self._array
        for position in self._positions(item):
            if not array[position >> 3] & (1 << (position & 7)):
                return False
        return True
