"""Validator parts for tests that drive them directly (no Kafka loops started)."""

from __future__ import annotations

from typing import Any

from fapiao_runtime.config import RuntimeConfig
from fapiao_runtime.ledger_client import SigningKey
from ledger.settings import LedgerSettings
from ledger.validator import Validator

IDS = [f"validator-{i}" for i in range(1, 5)]


def unit_settings(*, recent_heights: int = 10_000) -> LedgerSettings:
    """validator-1 of four (quorum 3), with fresh keys."""
    own = SigningKey.generate(IDS[0])
    keys = {i: own.public_key if i == IDS[0] else SigningKey.generate(i).public_key for i in IDS}
    return LedgerSettings(
        validator_id=IDS[0],
        signing_key=own,
        validator_keys=keys,
        authority_keys={},
        max_txs=500,
        cut_ms=20,
        quorum=3,
        recent_heights=recent_heights,
    )


def unit_validator(pool: Any, producer: Any = None, *, recent_heights: int = 10_000) -> Validator:
    """validator-1 of four (quorum 3), with fresh keys, over `pool` and `producer`."""
    return Validator(RuntimeConfig.from_env("ledger", 0), unit_settings(recent_heights=recent_heights), pool, producer)
