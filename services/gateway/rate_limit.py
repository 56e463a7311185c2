"""Per-client token buckets with bounded memory (least recently seen clients are forgotten)."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """Allows `burst` requests at once per client, refilled at `per_minute` per minute.

    At most `max_clients` buckets are kept. When full, the least recently seen client is dropped, which
    can only ever make the limiter more lenient for that client, never block an innocent one; or, with
    `keep_spent`, only a bucket that has refilled completely is dropped (forgetting it loses nothing)
    and a new client is refused while none has: flooding the limiter with new clients cannot reset the
    budget of one being guarded.
    """

    EVICTION_SCAN = 64  # with keep_spent, how many of the least recently seen buckets a new client may evict

    def __init__(self, burst: int, per_minute: float, max_clients: int = 10_000, *, keep_spent: bool = False) -> None:
        if burst <= 0 or per_minute <= 0 or max_clients <= 0:
            raise ValueError("burst, per_minute and max_clients must be positive")
        self.burst = burst
        self.rate_per_s = per_minute / 60.0
        self.max_clients = max_clients
        self.keep_spent = keep_spent
        # client -> (tokens, last refill time)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def available(self, client: str, now: float | None = None) -> bool:
        """Whether `client` has a token now, without taking it."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate_per_s) >= 1.0

    def give_back(self, client: str) -> None:
        """Return a token taken by `allow` (the request turned out not to count)."""
        if client in self._buckets:
            tokens, last = self._buckets[client]
            self._buckets[client] = (min(float(self.burst), tokens + 1.0), last)

    def _make_room(self, now: float) -> bool:
        """With keep_spent: drop one fully refilled bucket among the least recently seen; False if none."""
        for index, (client, (tokens, last)) in enumerate(self._buckets.items()):
            if index >= self.EVICTION_SCAN:
                return False
            if tokens + (now - last) * self.rate_per_s >= self.burst:
                del self._buckets[client]
                return True
        return False

    def allow(self, client: str, now: float | None = None) -> tuple[bool, float]:
        """Take one token for `client`. Returns (allowed, seconds until the next token if refused)."""
        now = time.monotonic() if now is None else now
        if self.keep_spent and client not in self._buckets and len(self._buckets) >= self.max_clients:
            if not self._make_room(now):
                return False, 1.0 / self.rate_per_s
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
