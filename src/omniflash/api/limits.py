"""Authentication and read limits without a database write per request.

- ``KeyCache``: API keys looked up by hash, remembered for ``ttl_s`` (5 s), so a poll
  costs no key query; a revoked key stops working on every replica within ``ttl_s``.
- ``ReadLimiter``: a token bucket per key in this process for reads (polls, lists);
  ``read_rpm`` a minute, refilled continuously.  Submits keep their exact, shared
  per-minute limit in the database (``KeyStore.hit``).

>>> limiter = ReadLimiter(per_minute=2)
>>> [limiter.take(1, now=0.0), limiter.take(1, now=0.0), limiter.take(1, now=0.0)]
[0.0, 0.0, 30.0]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

from omniflash.ids import hash_key
from omniflash.store import KeyInfo

__all__ = ["KeyCache", "ReadLimiter"]


class KeyCache:
    """Keys by the hash of their token, for ``ttl_s``; used on the event loop only."""

    MAX_ENTRIES = 10_000

    def __init__(
        self, lookup: Callable[[str], Awaitable[KeyInfo | None]], ttl_s: float = 5.0
    ) -> None:
        self.lookup = lookup
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, KeyInfo]] = {}

    async def authenticate(self, token: str, now: float | None = None) -> KeyInfo | None:
        """The key, from the cache or the database; ``None`` when unknown or revoked."""
        now = time.monotonic() if now is None else now
        digest = hash_key(token)
        hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        key = await self.lookup(digest)
        if key is None:
            self._entries.pop(digest, None)
        else:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (now, key)
        return key


class ReadLimiter:
    MAX_KEYS = 100_000

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: int, now: float | None = None) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                if len(self._buckets) >= self.MAX_KEYS:
                    self._buckets.clear()
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate
