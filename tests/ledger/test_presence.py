"""The presence filter that spares validators the preload query for ids their database cannot hold."""

from __future__ import annotations

import pytest
from ledger.presence import PresenceFilter

pytestmark = pytest.mark.unit


def test_every_added_id_is_reported_present() -> None:
    present = PresenceFilter(20_000)
    ids = [f"invoice-{n}" for n in range(20_000)]
    for i in ids:
        present.add(i)
    assert all(i in present for i in ids)  # no false negatives: a stored id is always looked up
    assert present.count == 20_000


def test_ids_never_added_are_mostly_reported_absent() -> None:
    present = PresenceFilter(20_000)
    for n in range(20_000):
        present.add(f"tx-{n}")
    false_positives = sum(1 for n in range(20_000) if f"other-{n}" in present)
    assert false_positives < 20_000 * 0.02  # about 0.5 % at capacity with 16 bits and 3 positions
    assert "tx-20000" not in PresenceFilter(10)


def test_filter_is_sized_for_what_is_stored() -> None:
    small, large = PresenceFilter.for_stored(0), PresenceFilter.for_stored(5_000_000)
    assert small.capacity >= 1_000_000  # a new database still gets room for growth
    assert large.capacity >= 2 * 5_000_000  # room for as many again as is stored
    assert PresenceFilter(20_000).capacity >= 20_000
