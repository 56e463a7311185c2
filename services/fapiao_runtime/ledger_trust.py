"""Trust anchors of the ledger and offline receipt verification.

Validator public keys and registry-authority public keys come from the environment:

    FAPIAO_LEDGER_VALIDATOR_KEYS="validator-1:<base64 raw Ed25519 public key>,validator-2:..."
    FAPIAO_LEDGER_AUTHORITY_KEYS="authority-1:<base64 raw Ed25519 public key>"

`verify_receipt` needs nothing but those validator keys: it checks the Merkle inclusion of the
transaction and of its result under the header roots, and that at least `quorum` distinct known
validators signed the exact header bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping

import ed25519_zebra
import nacl.bindings
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.common.v1 import signature_pb2
from fapiao.ledger.v1 import ledger_pb2
from google.protobuf.message import DecodeError

from fapiao_runtime import merkle
from fapiao_runtime.errors import InvalidArgument

ED25519 = "Ed25519"
VALIDATOR_KEYS_ENV = "FAPIAO_LEDGER_VALIDATOR_KEYS"
AUTHORITY_KEYS_ENV = "FAPIAO_LEDGER_AUTHORITY_KEYS"

PublicKeys = Mapping[str, Ed25519PublicKey]


class ReceiptInvalid(InvalidArgument):
    """A receipt failed verification; `reason` names the first check that failed."""


def quorum_for(validators: int) -> int:
    """2f+1 for n = 3f+1 validators (3 of 4); at least a majority for other sizes."""
    if validators <= 0:
        raise ValueError("at least one validator is required")
    f = (validators - 1) // 3
    return max(2 * f + 1, validators // 2 + 1)


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """Ed25519 public key from its 32 raw bytes; ValueError otherwise."""
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_key_list(text: str) -> dict[str, Ed25519PublicKey]:
    """Parse "id:<b64 raw>,id2:<b64 raw>" (whitespace tolerated). ValueError names the bad entry."""
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        key_id, sep, b64 = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise ValueError(f"key entry {entry[:40]!r} must be <key_id>:<base64 raw public key>")
        if key_id in keys:
            raise ValueError(f"key {key_id!r} listed twice")
        try:
            raw = base64.b64decode(b64.strip(), validate=True)
            keys[key_id] = public_key_from_raw(raw)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"key {key_id!r}: {exc}") from None
    return keys


def format_key_list(keys: Mapping[str, bytes]) -> str:
    """Inverse of parse_key_list for raw public keys."""
    return ",".join(f"{key_id}:{base64.b64encode(raw).decode()}" for key_id, raw in keys.items())


def validator_keys_from_env(env: Mapping[str, str] | None = None) -> dict[str, Ed25519PublicKey]:
    """Validator public keys from FAPIAO_LEDGER_VALIDATOR_KEYS (empty dict when unset)."""
    return parse_key_list((env if env is not None else os.environ).get(VALIDATOR_KEYS_ENV, ""))


def authority_keys_from_env(env: Mapping[str, str] | None = None) -> dict[str, Ed25519PublicKey]:
    """Registry-authority public keys from FAPIAO_LEDGER_AUTHORITY_KEYS (empty dict when unset)."""
    return parse_key_list((env if env is not None else os.environ).get(AUTHORITY_KEYS_ENV, ""))


# Public keys already checked by `_acceptable_key`, bounded: keys come from registries, not from callers.
_KEY_CHECKS: dict[bytes, bool] = {}
_KEY_CHECKS_MAX = 4096


def _acceptable_key(raw: bytes) -> bool:
    """A canonical point of the prime-order subgroup (libsodium's crypto_core_ed25519_is_valid_point),
    checked once per key: about as costly as a verification, and a pure function of the bytes."""
    ok = _KEY_CHECKS.get(raw)
    if ok is None:
        ok = bool(nacl.bindings.crypto_core_ed25519_is_valid_point(raw))
        if len(_KEY_CHECKS) >= _KEY_CHECKS_MAX:
            _KEY_CHECKS.clear()
        _KEY_CHECKS[raw] = ok
    return ok


def ed25519_verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature over `data` by `key`.

    Every Ed25519 check of Fapiao goes through here, so validators, auditors and offline verifiers apply
    one acceptance rule: ZIP 215 (the cofactored equation, canonical S, as ed25519-zebra implements it;
    the rule consensus systems adopted because RFC 8032 lets verifiers disagree), with the public key
    also required to be a canonical point of the prime-order subgroup (every honestly made key is).
    Under such a key every signature an RFC 8032 verifier accepts (libsodium, OpenSSL) passes, and only
    the key's holder can make one that passes here and not there (an R with a small-order component).
    A small-order key, under which anyone could sign anything, is refused. Signing stays with `cryptography`.
    """
    if len(signature) != 64:
        return False
    raw = key.public_bytes_raw()
    if not _acceptable_key(raw):
        return False
    return bool(ed25519_zebra.ed_verify(bytes(signature), bytes(data), raw))


def verify_signature(keys: PublicKeys, signature: signature_pb2.Signature, data: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature over `data` by the key it names in `keys`."""
    if signature.algorithm != ED25519:
        return False
    key = keys.get(signature.key_id)
    return key is not None and ed25519_verify(key, signature.signature, data)


def header_hash(header_bytes: bytes) -> bytes:
    """The hash validators sign over and compare: SHA-256 of the exact header bytes."""
    return hashlib.sha256(header_bytes).digest()


def count_valid_signatures(
    header_bytes: bytes, signatures: list[ledger_pb2.BlockSignature], validator_keys: PublicKeys
) -> set[str]:
    """Distinct validator ids whose signature verifies over `header_bytes` with their own key."""
    header = ledger_pb2.BlockHeader.FromString(header_bytes)
    digest = header_hash(header_bytes)
    signers: set[str] = set()
    for sig in signatures:
        if sig.validator_id not in validator_keys or sig.signature.key_id != sig.validator_id:
            continue
        if sig.header_hash != digest or sig.chain_id != header.chain_id or sig.height != header.height:
            continue
        if verify_signature(validator_keys, sig.signature, header_bytes):
            signers.add(sig.validator_id)
    return signers


def verify_receipt(
    receipt: ledger_pb2.Receipt, validator_keys: PublicKeys, quorum: int | None = None
) -> ledger_pb2.TransactionResult:
    """Verify `receipt` offline and return its TransactionResult.

    quorum defaults to quorum_for(len(validator_keys)). Raises ReceiptInvalid with reason
    RECEIPT_MALFORMED, RECEIPT_BAD_TRANSACTION_PROOF, RECEIPT_BAD_RESULT_PROOF,
    RECEIPT_RESULT_MISMATCH, RECEIPT_BAD_SIGNATURE or RECEIPT_NO_QUORUM.
    """
    if not validator_keys:
        raise ReceiptInvalid("RECEIPT_NO_QUORUM", "no validator keys configured")
    needed = quorum if quorum is not None else quorum_for(len(validator_keys))
    try:
        header = ledger_pb2.BlockHeader.FromString(receipt.header)
        signed = ledger_pb2.SignedTransaction.FromString(receipt.transaction)
        body = ledger_pb2.TransactionBody.FromString(signed.body)
        result = ledger_pb2.TransactionResult.FromString(receipt.result)
    except DecodeError as exc:
        raise ReceiptInvalid("RECEIPT_MALFORMED", f"undecodable part: {exc}") from None
    if receipt.tree_size != header.transaction_count or not 0 <= receipt.index < receipt.tree_size:
        raise ReceiptInvalid("RECEIPT_MALFORMED", "index or tree size does not match the header")
    if not merkle.verify_inclusion(
        receipt.transaction,
        receipt.index,
        receipt.tree_size,
        list(receipt.transaction_audit_path),
        header.transactions_root,
    ):
        raise ReceiptInvalid("RECEIPT_BAD_TRANSACTION_PROOF", "transaction is not in the block's transactions root")
    if not merkle.verify_inclusion(
        receipt.result, receipt.index, receipt.tree_size, list(receipt.result_audit_path), header.results_root
    ):
        raise ReceiptInvalid("RECEIPT_BAD_RESULT_PROOF", "result is not in the block's results root")
    if (
        result.transaction_id != body.transaction_id
        or result.invoice_id != body.invoice_id
        or result.chain_id != header.chain_id
        or result.height != header.height
        or result.index != receipt.index
    ):
        raise ReceiptInvalid("RECEIPT_RESULT_MISMATCH", "result does not describe this transaction at this position")
    signers = count_valid_signatures(receipt.header, list(receipt.signatures), validator_keys)
    # Strict: a receipt carrying any signature that does not verify (or a repeated signer) was altered.
    if len(signers) != len(receipt.signatures):
        raise ReceiptInvalid("RECEIPT_BAD_SIGNATURE", "a signature in the receipt does not verify over the header")
    if len(signers) < needed:
        raise ReceiptInvalid(
            "RECEIPT_NO_QUORUM", f"{len(signers)} valid validator signatures over the header, {needed} required"
        )
    return result
