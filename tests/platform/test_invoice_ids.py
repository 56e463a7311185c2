"""The invoice id of a number is the RFC 4122 version-5 UUID of the number in Fapiao's namespace."""

from __future__ import annotations

import random
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as kafka_murmur2
from fapiao_runtime.invoice_ids import chain_of, invoice_id_for_number, murmur2

pytestmark = pytest.mark.unit

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://fapiao.dev/invoice-number")


def test_same_as_uuid5() -> None:
    rng = random.Random(7)
    numbers = [f"{rng.randrange(10**20):020d}" for _ in range(2_000)] + ["", "发票", "0" * 20]
    for number in numbers:
        assert invoice_id_for_number(number) == str(uuid.uuid5(NAMESPACE, number))


def test_a_known_id_does_not_change() -> None:
    # Ids are stored on the ledger and in every service: the derivation must never change.
    assert invoice_id_for_number("26442000000000000001") == "00aa51b4-d392-5f0a-9c12-c39870f24966"
    assert uuid.UUID(invoice_id_for_number("26442000000000000001")).version == 5


def test_chain_of_is_the_partition_kafkas_default_partitioner_picks() -> None:
    """Producers key ledger transactions by invoice id and let Kafka's default partitioner choose; the
    validators' WRONG_CHAIN check must agree with it for every key length and partition count."""
    rng = random.Random(3)
    partitioner = DefaultPartitioner()
    for length in range(0, 70):
        data = bytes(rng.randrange(256) for _ in range(length))
        assert murmur2(data) == kafka_murmur2(data)
    for _ in range(500):
        key = str(uuid.UUID(int=rng.getrandbits(128)))
        chains = rng.randint(1, 16)
        assert chain_of(key, chains) == partitioner(key.encode(), list(range(chains)), list(range(chains)))
