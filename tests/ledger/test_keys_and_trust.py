"""Unit tests: local key files, key lists from the environment, quorum sizes, signing keys."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.ledger_client import SigningKey, key_registration_events, sign_transaction, transaction_event
from fapiao_runtime.ledger_trust import parse_key_list, quorum_for, validator_keys_from_env
from fapiao_stack.keys import ensure_local_keys, load_authority_key, validator_env, validator_key_files

pytestmark = pytest.mark.unit


def test_local_keys_are_private_stable_and_listed(tmp_path: Path) -> None:
    env = ensure_local_keys(tmp_path, 4)
    assert ensure_local_keys(tmp_path, 4) == env  # created once, reused
    files = validator_key_files(tmp_path, 4)
    assert sorted(files) == [f"validator-{i}" for i in range(1, 5)]
    for path in [*files.values(), Path(env["FAPIAO_LEDGER_AUTHORITY_KEY_FILE"])]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    keys = validator_keys_from_env(env)
    for vid, path in files.items():
        key = SigningKey.from_pem(vid, path.read_bytes())
        assert keys[vid].public_bytes_raw() == key.public_raw
    authority = load_authority_key(Path(env["FAPIAO_LEDGER_AUTHORITY_KEY_FILE"]))
    assert parse_key_list(env["FAPIAO_LEDGER_AUTHORITY_KEYS"])["authority-1"].public_bytes_raw() == authority.public_raw
    assert validator_env(tmp_path, 4, 3)["FAPIAO_DB_SCHEMA"] == "ledger_3"


def test_key_list_errors_name_the_entry() -> None:
    with pytest.raises(ValueError, match="v1"):
        parse_key_list("v1:not-base64!")
    with pytest.raises(ValueError, match="32 bytes"):
        parse_key_list("v1:AAAA")
    key = SigningKey.generate("x")
    import base64

    raw = base64.b64encode(key.public_raw).decode()
    with pytest.raises(ValueError, match="twice"):
        parse_key_list(f"v1:{raw},v1:{raw}")
    assert list(parse_key_list(f" v1:{raw} , v2:{raw} ,")) == ["v1", "v2"]


def test_quorum_sizes() -> None:
    assert [quorum_for(n) for n in (1, 2, 3, 4, 5, 7, 10)] == [1, 2, 2, 3, 3, 5, 7]


def test_signing_keys_and_wire_helpers() -> None:
    key = SigningKey.generate("issuer-1")
    assert "PRIVATE" not in repr(key)
    encrypted = key.to_pem(b"secret")
    assert b"ENCRYPTED" in encrypted
    assert SigningKey.from_pem("issuer-1", encrypted, b"secret").public_raw == key.public_raw
    with pytest.raises(ValueError):
        SigningKey.from_pem("issuer-1", encrypted, b"wrong")
    with pytest.raises(InvalidArgument):
        sign_transaction(ledger_pb2.TransactionBody(transaction_id="not-a-uuid"), key)
    tx_id = str(uuid.uuid4())
    signed = sign_transaction(ledger_pb2.TransactionBody(transaction_id=tx_id, invoice_id="inv-1"), key)
    event = transaction_event(signed, "inv-1", "test")
    assert str(event.event_id) == tx_id and event.key == b"inv-1" and event.topic == "ledger.tx.v1"
    with pytest.raises(InvalidArgument):
        transaction_event(signed, "inv-2", "test")
    registration = ledger_pb2.KeyRegistration(
        key_id="issuer-1", public_key=key.public_raw, role=ledger_pb2.SUBMITTER_ROLE_ISSUER, registration_id="r-1"
    )
    events = key_registration_events(key, registration, 3, "test")
    assert [e.partition for e in events] == [0, 1, 2]
    assert len({e.event_id for e in events}) == 3


def test_receipt_files_load_as_binary_or_json() -> None:
    from google.protobuf import json_format
    from ledger.verify import load_receipt

    receipt = ledger_pb2.Receipt(transaction=b"tx", result=b"r", index=1, tree_size=2, header=b"h")
    receipt.transaction_audit_path.append(b"\x01" * 32)
    assert load_receipt(receipt.SerializeToString()) == receipt
    assert load_receipt(json_format.MessageToJson(receipt).encode()) == receipt
    with pytest.raises(ValueError):
        load_receipt(b"{not json")
    with pytest.raises(ValueError):
        load_receipt(b"\xff\xff\xff")


def test_one_ed25519_rule_for_every_check() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from fapiao_runtime.ledger_trust import ed25519_verify

    private = Ed25519PrivateKey.generate()
    key = private.public_key()
    data = b"header bytes"
    signature = private.sign(data)
    assert ed25519_verify(key, signature, data)
    assert not ed25519_verify(key, signature, data + b"!")
    assert not ed25519_verify(Ed25519PrivateKey.generate().public_key(), signature, data)
    for i in (0, 31, 32, 63):
        flipped = bytearray(signature)
        flipped[i] ^= 1
        assert not ed25519_verify(key, bytes(flipped), data)
    # A short signature must not borrow bytes of the message.
    assert not ed25519_verify(key, signature[:63], signature[63:] + data)
    assert not ed25519_verify(key, signature + b"\0", data)
    # The identity point as a key (small order): signatures "verify" for any message under a
    # cofactorless check with R = identity, S = 0; the shared rule refuses it.
    identity = Ed25519PublicKey.from_public_bytes(b"\x01" + b"\0" * 31)
    assert not ed25519_verify(identity, b"\x01" + b"\0" * 31 + b"\0" * 32, b"anything")


def test_the_ed25519_rule_is_zip215_with_prime_order_keys() -> None:
    """Pins the acceptance rule validators and offline verifiers share: a change of library or rule
    that would make them disagree with a running ledger fails here."""
    import hashlib

    import nacl.bindings as sodium
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from fapiao_runtime.ledger_trust import ed25519_verify

    order = 2**252 + 27742317777372353535851937790883648493
    torsion = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")  # order 8
    private = Ed25519PrivateKey.generate()
    key = private.public_key()
    data = b"transaction body"
    expanded = bytearray(hashlib.sha512(private.private_bytes_raw()).digest()[:32])
    expanded[0] &= 248
    expanded[31] = (expanded[31] & 127) | 64
    secret = int.from_bytes(expanded, "little") % order

    def sign_by_hand(public: bytes, r_extra: bytes | None) -> bytes:
        """An Ed25519 signature by `secret` that names `public`, R optionally with a point added."""
        r = int.from_bytes(hashlib.sha512(b"nonce" + public + data).digest(), "little") % order
        big_r = sodium.crypto_scalarmult_ed25519_base_noclamp(r.to_bytes(32, "little"))
        if r_extra is not None:
            big_r = sodium.crypto_core_ed25519_add(big_r, r_extra)
        k = int.from_bytes(hashlib.sha512(big_r + public + data).digest(), "little") % order
        return big_r + ((r + k * secret) % order).to_bytes(32, "little")

    honest = sign_by_hand(key.public_bytes_raw(), None)
    assert ed25519_verify(key, honest, data)
    key.verify(honest, data)  # OpenSSL agrees: the construction is Ed25519's
    # S + l encodes the same scalar: refused (S must be canonical), or signatures would be malleable.
    s = int.from_bytes(honest[32:], "little") + order
    assert not ed25519_verify(key, honest[:32] + s.to_bytes(32, "little"), data)

    # The key's holder can put a small-order component into R: the cofactorless check of RFC 8032
    # verifiers refuses it, ZIP 215's cofactored one accepts it.
    torsioned = sign_by_hand(key.public_bytes_raw(), torsion)
    with pytest.raises(InvalidSignature):
        key.verify(torsioned, data)
    assert ed25519_verify(key, torsioned, data)
    assert not ed25519_verify(key, torsioned, data + b"!")

    # A key with a small-order component (mixed order) is refused, even with a signature that passes
    # the cofactored equation under it.
    mixed_raw = sodium.crypto_core_ed25519_add(key.public_bytes_raw(), torsion)
    mixed = Ed25519PublicKey.from_public_bytes(mixed_raw)
    assert not ed25519_verify(mixed, sign_by_hand(mixed_raw, None), data)


def test_f_plus_one_validators_publish_each_chains_results() -> None:
    from ledger.publishing import result_publishers

    four = ["validator-1", "validator-2", "validator-3", "validator-4"]
    assert result_publishers(four, 0) == {"validator-1", "validator-2"}
    assert result_publishers(four, 3) == {"validator-4", "validator-1"}
    # Over the chains, the work is spread evenly.
    counts = {v: sum(v in result_publishers(four, c) for c in range(8)) for v in four}
    assert set(counts.values()) == {4}
    assert result_publishers(["validator-1"], 5) == {"validator-1"}
    seven = [f"validator-{i}" for i in range(1, 8)]  # f = 2
    assert len(result_publishers(seven, 1)) == 3
