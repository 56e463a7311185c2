"""Bounds on VerifyInvoice so it cannot be used to enumerate invoices.

- per organisation and invoice: `daily_checks_per_invoice` checks per calendar day (China's 查验 rule
  allows 5), counted in PostgreSQL so every replica shares the count;
- per organisation: a token bucket of `per_second` checks per second (burst = one second's worth),
  kept in memory per replica (N replicas allow N times the rate; the daily count is the hard bound).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
from fapiao_runtime.errors import ResourceExhausted

MAX_TRACKED_ORGANISATIONS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class OrganisationRateLimiter:
    def __init__(self, per_second: float) -> None:
        assert per_second > 0
        self._rate = per_second
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tax_id: str) -> None:
        """Spend one token; RESOURCE_EXHAUSTED RATE_LIMITED when the organisation is over its rate."""
        now = time.monotonic()
        bucket = self._buckets.get(tax_id)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_ORGANISATIONS:
                self._buckets.clear()  # bounded memory; forgetting buckets only grants a fresh burst
            bucket = self._buckets[tax_id] = _Bucket(self._rate, now)
        bucket.tokens = min(self._rate, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1:
            raise ResourceExhausted("RATE_LIMITED", f"at most {self._rate:g} verifications per second")
        bucket.tokens -= 1


async def count_check(
    conn: asyncpg.Connection | asyncpg.Pool, tax_id: str, invoice_number: str, daily_limit: int
) -> int:
    """Count one check of `invoice_number` by `tax_id` today; return checks left today.

    RESOURCE_EXHAUSTED DAILY_CHECK_LIMIT once the limit is reached (the refused check is not counted).
    """
    checks = await conn.fetchval(
        "INSERT INTO verification_checks AS v (organisation_tax_id, invoice_number, check_day, checks)"
        " VALUES ($1, $2, current_date, 1)"
        " ON CONFLICT (organisation_tax_id, invoice_number, check_day)"
        " DO UPDATE SET checks = v.checks + 1 WHERE v.checks < $3 RETURNING checks",
        tax_id,
        invoice_number,
        daily_limit,
    )
    if checks is None:
        raise ResourceExhausted("DAILY_CHECK_LIMIT", f"this invoice may be checked at most {daily_limit} times a day")
    return int(daily_limit - checks)


async def uncount_check(conn: asyncpg.Connection | asyncpg.Pool, tax_id: str, invoice_number: str) -> None:
    """Give back a check counted by `count_check` that could not be answered (UNAVAILABLE)."""
    await conn.execute(
        "UPDATE verification_checks SET checks = checks - 1 WHERE organisation_tax_id = $1 AND invoice_number = $2"
        " AND check_day = current_date AND checks > 0",
        tax_id,
        invoice_number,
    )
