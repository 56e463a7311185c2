"""Wire formats a validator reads and writes: log records, block signatures, results, cut markers."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fapiao.common.v1 import envelope_pb2
from fapiao.ledger.v1 import ledger_pb2
from fapiao_runtime.envelope import make_envelope, parse_envelope, unpack
from fapiao_runtime.errors import FapiaoError
from fapiao_runtime.ledger_trust import ED25519, verify_signature
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.state_machine import ParsedTransaction, parse_transaction

RESULT_TYPE = ledger_pb2.TransactionResult.DESCRIPTOR.full_name


@dataclass
class LogRecord:
    """One record of ledger.tx.v1, decoded once. kind: "tx" | "cut" | "key" | "skip"."""

    offset: int
    aggregate_id: str
    kind: str
    tx: ParsedTransaction | None = None
    marker: ledger_pb2.TimeToCut | None = None
    registration: ledger_pb2.SignedKeyRegistration | None = None
    producer: str = ""  # of a marker: the validator that says it wrote it (unsigned; timing only)
    traceparent: str = ""  # of a transaction: the trace of the request that caused it (not part of the ledger)


def decode_record(offset: int, raw: bytes | None) -> LogRecord:
    """Records that are not ledger records are skipped by every validator alike (deterministic)."""
    try:
        envelope = parse_envelope(raw or b"")
        record = unpack(envelope, ledger_pb2.LedgerRecord)
    except (FapiaoError, DecodeError):
        return LogRecord(offset, "", "skip")
    which = record.WhichOneof("record")
    if which == "transaction":
        parsed = parse_transaction(record.transaction)
        return LogRecord(offset, envelope.aggregate_id, "tx", tx=parsed, traceparent=envelope.traceparent)
    if which == "time_to_cut":
        return LogRecord(offset, envelope.aggregate_id, "cut", marker=record.time_to_cut, producer=envelope.producer)
    if which == "key_registration":
        return LogRecord(offset, envelope.aggregate_id, "key", registration=record.key_registration)
    return LogRecord(offset, envelope.aggregate_id, "skip")


def signature_event_id(validator_id: str, chain_id: int, height: int) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"fapiao:block-signature:{validator_id}:{chain_id}:{height}")


def signature_envelope(
    validator_id: str, chain_id: int, height: int, header: bytes, signature: bytes
) -> envelope_pb2.EventEnvelope:
    """A BlockSignature carrying the signed header bytes, so any reader can verify it alone."""
    message = ledger_pb2.BlockSignature(
        chain_id=chain_id,
        height=height,
        header_hash=hashlib.sha256(header).digest(),
        validator_id=validator_id,
        header=header,
    )
    message.signature.algorithm = ED25519
    message.signature.key_id = validator_id
    message.signature.signature = signature
    return make_envelope(
        message,
        aggregate_id=f"chain-{chain_id}",
        producer=validator_id,
        event_id=signature_event_id(validator_id, chain_id, height),
    )


# Returned by verified_signature for the reader's own signatures, which it does not re-verify.
OWN_SIGNATURE = ledger_pb2.BlockSignature()


def verified_signature(
    raw: bytes | None, validator_keys: Mapping[str, Ed25519PublicKey], own_id: str = ""
) -> ledger_pb2.BlockSignature | None:
    """The BlockSignature in `raw` if it is a known validator's valid signature over the header it
    carries (naming the same chain and height); None otherwise; OWN_SIGNATURE (unverified) when it
    names `own_id`."""
    try:
        sig = unpack(parse_envelope(raw or b""), ledger_pb2.BlockSignature)
    except (FapiaoError, DecodeError):
        return None
    if own_id and sig.validator_id == own_id:
        return OWN_SIGNATURE
    if sig.signature.key_id != sig.validator_id or hashlib.sha256(sig.header).digest() != sig.header_hash:
        return None
    try:
        header = ledger_pb2.BlockHeader.FromString(sig.header)
    except DecodeError:
        return None
    if header.chain_id != sig.chain_id or header.height != sig.height:
        return None
    if not verify_signature(validator_keys, sig.signature, sig.header):
        return None
    return sig


def result_envelope(
    validator_id: str,
    transaction_id: str,
    event_id: uuid.UUID,
    raw: bytes,
    occurred_at: Timestamp,
    traceparent: str = "",
) -> envelope_pb2.EventEnvelope:
    """Envelope of a stored result; the stored bytes are the payload as they are (no re-serialization).
    `traceparent` continues the trace of the transaction's request (not part of what validators sign)."""
    return envelope_pb2.EventEnvelope(
        event_id=str(event_id),
        event_type=RESULT_TYPE,
        aggregate_id=transaction_id,
        occurred_at=occurred_at,
        producer=validator_id,
        payload=raw,
        traceparent=traceparent,
    )


def marker_envelope(validator_id: str, chain_id: int, height: int) -> envelope_pb2.EventEnvelope:
    """A TimeToCut marker for `height`; its cut time (the only clock reading in a block) is taken now."""
    cut_time = Timestamp()
    cut_time.GetCurrentTime()
    record = ledger_pb2.LedgerRecord(time_to_cut=ledger_pb2.TimeToCut(height=height, cut_time=cut_time))
    return make_envelope(record, aggregate_id=f"chain-{chain_id}", producer=validator_id)
