"""The issuer-key follower's catch-up wait (unit: polls are simulated, no broker)."""

from __future__ import annotations

import asyncio
import time

import pytest
from reimbursement import issuer_keys
from reimbursement.issuer_keys import IssuerKeyRecorder

pytestmark = pytest.mark.unit


async def test_caught_up_needs_a_poll_a_fetch_window_after_the_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(issuer_keys, "CATCH_UP_S", 0.1)
    recorder = IssuerKeyRecorder("127.0.0.1:1", "ledger.tx.v1", "group", None, {})  # type: ignore[arg-type]
    assert not await recorder.caught_up(time.monotonic(), timeout_s=0.15), "nobody polls: not caught up"

    async def poll_every_20_ms() -> None:
        while True:
            await asyncio.sleep(0.02)
            recorder._mark_polled()

    poller = asyncio.ensure_future(poll_every_20_ms())
    try:
        since = time.monotonic()
        assert await recorder.caught_up(since, timeout_s=1.0)
        assert recorder.polled_at >= since + 0.1, "a poll right after the moment is not enough"
    finally:
        poller.cancel()
