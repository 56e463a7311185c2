"""Per-client token buckets with bounded memory (least recently seen clients are forgotten)."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """Allows `burst` requests at once per client, refilled at `per_minute` per minute.

    At most `max_clients` buckets are kept; when full, the least recently seen client is dropped, which
    can only ever make the limiter more lenient for that client, never block an innocent one.
    """

    def __init__(self, burst: int, per_minute: float, max_clients: int = 10_000) -> None:
        if burst <= 0 or per_minute <= 0 or max_clients <= 0:
            raise ValueError("burst, per_minute and max_clients must be positive")
        self.burst = burst
        self.rate_per_s = per_minute / 60.0
        self.max_clients = max_clients
        # client -> (tokens, last refill time)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def available(self, client: str, now: float | None = None) -> bool:
        """Whether `client` has a token now, without taking it."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate_per_s) >= 1.0

    def allow(self, client: str, now: float | None = None) -> tuple[bool, float]:
        """Take one token for `client`. Returns (allowed, seconds until the next token if refused)."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        retry_after = 0.0 if allowed else (1.0 - tokens) / self.rate_per_s
        return allowed, retry_after
