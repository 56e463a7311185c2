"""RFC 6962 Merkle trees (leaf prefix 0x00, node prefix 0x01) with inclusion proofs.

Kept in the shared runtime (not the ledger package) so offline verifiers need nothing else. The
proof format is the RFC 6962 audit path; verification follows RFC 9162 section 2.1.3.2, which also
rejects proofs whose length does not match (index, tree_size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """MTH of a one-element list: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def _root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    # Bottom-up pairing gives the same tree as RFC 6962's recursive split: an odd last node is
    # promoted unchanged to the next level.
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root(leaves: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash of `leaves` (raw leaf data); SHA-256("") for an empty list."""
    if not leaves:
        return EMPTY_ROOT
    return _root_of_hashes([leaf_hash(leaf) for leaf in leaves])


class MerkleTree:
    """A tree over leaf hashes that remembers its subtree roots: the first proof costs O(n) hashes,
    later proofs of the same tree O(log n). For serving many receipts of one block."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.size = len(leaf_hashes)
        self._leaves = list(leaf_hashes)
        self._roots: dict[tuple[int, int], bytes] = {}

    @classmethod
    def of(cls, leaves: Sequence[bytes]) -> MerkleTree:
        return cls([leaf_hash(leaf) for leaf in leaves])

    def _root(self, lo: int, hi: int) -> bytes:
        """MTH of leaves[lo:hi] (hi > lo), by RFC 6962's recursive split."""
        if hi - lo == 1:
            return self._leaves[lo]
        known = self._roots.get((lo, hi))
        if known is None:
            k = _split(hi - lo)
            known = node_hash(self._root(lo, lo + k), self._root(lo + k, hi))
            self._roots[(lo, hi)] = known
        return known

    def root(self) -> bytes:
        return self._root(0, self.size) if self.size else EMPTY_ROOT

    def proof(self, index: int) -> list[bytes]:
        """RFC 6962 PATH(index): sibling hashes from the leaf up to the root."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index {index} outside tree of size {self.size}")
        path: list[bytes] = []
        lo, hi = 0, self.size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._root(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._root(lo, lo + k))
                lo += k
        path.reverse()
        return path


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 PATH(index, leaves): sibling hashes from the leaf up to the root.

    Raises ValueError when index is outside the tree.
    """
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} outside tree of size {len(leaves)}")
    return MerkleTree.of(leaves).proof(index)


def root_from_proof(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]) -> bytes:
    """Recompute the root from a leaf's data and its audit path (RFC 9162 2.1.3.2).

    Raises ValueError for a proof that cannot belong to a tree of `tree_size` at `index`.
    """
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf index {index} outside tree of size {tree_size}")
    fn, sn = index, tree_size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if len(p) != HASH_SIZE:
            raise ValueError("proof element is not a SHA-256 hash")
        if sn == 0:
            raise ValueError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof is shorter than the tree is deep")
    return r


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], expected_root: bytes) -> bool:
    """True when `proof` shows `leaf` at `index` in the tree of `tree_size` with root `expected_root`."""
    try:
        return root_from_proof(leaf, index, tree_size, proof) == expected_root
    except ValueError:
        return False
