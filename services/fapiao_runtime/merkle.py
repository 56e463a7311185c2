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


def _path(index: int, hashes: Sequence[bytes]) -> list[bytes]:
    n = len(hashes)
    if n <= 1:
        return []
    k = _split(n)
    if index < k:
        return [*_path(index, hashes[:k]), _root_of_hashes(hashes[k:])]
    return [*_path(index - k, hashes[k:]), _root_of_hashes(hashes[:k])]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 PATH(index, leaves): sibling hashes from the leaf up to the root.

    Raises ValueError when index is outside the tree.
    """
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} outside tree of size {len(leaves)}")
    return _path(index, [leaf_hash(leaf) for leaf in leaves])


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
