"""The benchmarks' percentile: nearest rank, one definition for every figure."""

from __future__ import annotations

import math

import pytest
from fapiao_bench.stats import percentile

pytestmark = pytest.mark.unit


def test_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
