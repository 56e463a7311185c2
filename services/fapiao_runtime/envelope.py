"""Event envelopes: every Kafka message is an EventEnvelope whose key is the aggregate id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypeVar

from fapiao.common.v1 import envelope_pb2
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from fapiao_runtime import tracing
from fapiao_runtime.errors import InvalidArgument

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class OutgoingEvent:
    """An event ready for the outbox: topic (logical name, unprefixed), key and envelope bytes."""

    event_id: uuid.UUID
    topic: str
    key: bytes
    envelope_bytes: bytes
    # Explicit partition, only for records that must reach every partition (e.g. ledger key registrations).
    partition: int | None = None


def make_envelope(
    payload: Message,
    *,
    aggregate_id: str,
    producer: str,
    event_id: uuid.UUID | None = None,
    traceparent: str | None = None,
) -> envelope_pb2.EventEnvelope:
    """Wrap `payload`. Pass a deterministic `event_id` when the event must be idempotent across retries.
    `traceparent`: the W3C trace context of the work that caused the event; by default that of the
    request or event being handled (`tracing.current()`)."""
    occurred = Timestamp()
    occurred.GetCurrentTime()
    return envelope_pb2.EventEnvelope(
        event_id=str(event_id or uuid.uuid4()),
        event_type=payload.DESCRIPTOR.full_name,
        aggregate_id=aggregate_id,
        occurred_at=occurred,
        traceparent=tracing.current() if traceparent is None else traceparent,
        producer=producer,
        payload=payload.SerializeToString(deterministic=True),
    )


def outgoing(topic: str, envelope: envelope_pb2.EventEnvelope, partition: int | None = None) -> OutgoingEvent:
    """Outbox entry for `envelope` on logical `topic`, keyed by its aggregate id."""
    return OutgoingEvent(
        event_id=uuid.UUID(envelope.event_id),
        topic=topic,
        key=envelope.aggregate_id.encode(),
        envelope_bytes=envelope.SerializeToString(deterministic=True),
        partition=partition,
    )


def parse_envelope(raw: bytes) -> envelope_pb2.EventEnvelope:
    """Decode an envelope; raise InvalidArgument for bytes that are not one (poison message)."""
    envelope = envelope_pb2.EventEnvelope()
    try:
        envelope.ParseFromString(raw)
    except DecodeError as exc:
        raise InvalidArgument("MALFORMED_ENVELOPE", str(exc)) from None
    if not envelope.event_id or not envelope.event_type:
        raise InvalidArgument("MALFORMED_ENVELOPE", "event_id and event_type are required")
    try:
        uuid.UUID(envelope.event_id)
    except ValueError:
        raise InvalidArgument("MALFORMED_ENVELOPE", "event_id must be a UUID") from None
    return envelope


def unpack(envelope: envelope_pb2.EventEnvelope, message_type: type[M]) -> M:
    """Decode the payload as `message_type`, checking event_type matches."""
    if envelope.event_type != message_type.DESCRIPTOR.full_name:
        raise InvalidArgument(
            "UNEXPECTED_EVENT_TYPE",
            f"expected {message_type.DESCRIPTOR.full_name}, got {envelope.event_type}",
        )
    message = message_type()
    try:
        message.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise InvalidArgument("MALFORMED_PAYLOAD", str(exc)) from None
    return message
