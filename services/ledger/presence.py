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

BITS_PER_ITEM = 16  # with 3 positions per id: about 0.5 % false positives at capacity
MIN_CAPACITY = 1_000_000
MAX_BITS = 1 << 32


class PresenceFilter:
    """Positions come from Python's own string hash (SipHash, keyed at random per process): computed
    in C and cached on the string, so a check costs a fraction of a microsecond, and ids chosen by a
    client cannot be aimed at the filter. The filter lives in one process and is rebuilt at start,
    so positions never need to agree across processes."""

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        bits = 64
        while bits < min(MAX_BITS, capacity * BITS_PER_ITEM):
            bits <<= 1
        self._mask = bits - 1
        self._array = bytearray(bits // 8)
        # How many ids it holds at its designed false-positive rate: the capacity asked for, rounded up
        # to a power of two (at most MAX_BITS / BITS_PER_ITEM); past it the rate degrades.
        self.capacity = bits // BITS_PER_ITEM
        self.count = 0

    @classmethod
    def for_stored(cls, stored: int) -> PresenceFilter:
        """A filter for `stored` ids already in the database, with room for growth."""
        return cls(max(MIN_CAPACITY, 2 * stored))

    def add(self, item: str) -> None:
        # Three positions by double hashing (Kirsch-Mitzenmacher) from the two halves of the hash.
        h, mask, array = hash(item), self._mask, self._array
        step = h >> 32
        for p in (h & mask, (h + step) & mask, (h + 2 * step) & mask):
            array[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def __contains__(self, item: str) -> bool:
        h, mask, array = hash(item), self._mask, self._array
        step = h >> 32
        p = h & mask
        if not array[p >> 3] & (1 << (p & 7)):
            return False
        p = (h + step) & mask
        if not array[p >> 3] & (1 << (p & 7)):
            return False
        p = (h + 2 * step) & mask
        return bool(array[p >> 3] & (1 << (p & 7)))
