"""The invoice id of a number is the RFC 4122 version-5 UUID of the number in Fapiao's namespace."""

from __future__ import annotations

import random
import uuid

import pytest
from fapiao_runtime.invoice_ids import invoice_id_for_number

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
