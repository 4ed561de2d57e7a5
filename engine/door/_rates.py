"""Rate limits: token buckets per (credential, action), shared by an engine's sessions."""

from __future__ import annotations

import trio


class RateLimiter:
    """Token buckets, one per (credential fingerprint, action), on trio's clock.

    A bucket holds up to ``burst`` tokens and refills at ``rate`` a second; each request
    takes one. Buckets that are full again are forgotten when there are many, so memory stays
    bounded by the credentials active in the last ``burst / rate`` seconds.
    """

    #: Buckets kept before full ones are pruned.
    PRUNE_AT = 4096

    def __init__(self) -> None:
        # key -> (tokens left, when counted, rate, burst)
        self._buckets: dict[tuple[str, str], tuple[float, float, float, int]] = {}

    def take(self, key: tuple[str, str], rate: float | None, burst: int) -> bool:
        """Take one token from ``key``'s bucket; ``False`` if it is empty."""
        if rate is None:
            return True
        now = trio.current_time()
        tokens = self._level(self._buckets.get(key, (float(burst), now, rate, burst)), now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now, rate, burst)
            return False
        self._buckets[key] = (tokens - 1.0, now, rate, burst)
        if len(self._buckets) > self.PRUNE_AT:
            self._prune(now)
        return True

    @staticmethod
    def _level(bucket: tuple[float, float, float, int], now: float) -> float:
        tokens, then, rate, burst = bucket
        return min(float(burst), tokens + (now - then) * rate)

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            if self._level(bucket, now) >= bucket[3]:
                del self._buckets[key]
