"""RFC 6962 Merkle trees against the reference test vectors (certificate-transparency)."""

from __future__ import annotations

import pytest
from fapiao_runtime import merkle

pytestmark = pytest.mark.unit

# Leaves and roots of the RFC 6962 reference tests (certificate-transparency merkle_tree_test).
LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_reference_vectors(size: int) -> None:
    assert merkle.root(LEAVES[:size]).hex() == ROOTS[size - 1]


def test_reference_inclusion_paths() -> None:
    # PATH(0, D[8]) and PATH(5, D[8]) from the reference tests.
    assert [p.hex() for p in merkle.inclusion_proof(LEAVES, 0)] == [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]
    assert [p.hex() for p in merkle.inclusion_proof(LEAVES, 5)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 13, 64, 100])
def test_every_proof_verifies_and_no_other_leaf_or_index_does(size: int) -> None:
    leaves = [f"leaf-{i}".encode() for i in range(size)]
    root = merkle.root(leaves)
    for index in range(size):
        proof = merkle.inclusion_proof(leaves, index)
        assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
        assert not merkle.verify_inclusion(leaves[index] + b"x", index, size, proof, root)
        if size > 1:
            assert not merkle.verify_inclusion(leaves[index], (index + 1) % size, size, proof, root)
            assert not merkle.verify_inclusion(leaves[index], index, size, proof[:-1], root)
            flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
            assert not merkle.verify_inclusion(leaves[index], index, size, flipped, root)


def test_out_of_range_index_is_rejected() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_proof([b"a"], 1)
    assert not merkle.verify_inclusion(b"a", 1, 1, [], merkle.root([b"a"]))


@pytest.mark.parametrize("size", [1, 6, 97, 500])
def test_one_tree_serves_every_proof_of_a_block(size: int) -> None:
    # A validator keeps one MerkleTree per block for its receipts: its remembered subtree roots must
    # give exactly the proofs and root computed from scratch, in any order of requests.
    leaves = [f"tx-{i}".encode() for i in range(size)]
    tree = merkle.MerkleTree.of(leaves)
    for index in [*reversed(range(size)), *range(size)]:
        assert tree.proof(index) == merkle.inclusion_proof(leaves, index)
    assert tree.root() == merkle.root(leaves)
    with pytest.raises(ValueError):
        tree.proof(size)
