"""Token-bucket rate limits per action, keyed by IP address or user ID."""

from __future__ import annotations

import math

from homeserver.config import BucketConfig, RateLimitsConfig
from homeserver.ephemeral import Ephemeral
from homeserver.errors import limit_exceeded


class RateLimiter:
    def __init__(self, config: RateLimitsConfig, store: Ephemeral) -> None:
        self._config = config
        self._store = store

    def bucket(self, action: str) -> BucketConfig:
        bucket = getattr(self._config, action, None)
        if not isinstance(bucket, BucketConfig):
            raise KeyError(f"no rate limit named {action!r}")
        return bucket

    async def check(self, action: str, key: str, cost: float = 1.0, bucket: BucketConfig | None = None) -> None:
        """Take from the bucket for (action, key) or raise 429 M_LIMIT_EXCEEDED.

        `bucket` is for limits configured outside `rate_limits` (e.g. media.thumbnail_generation_rate)."""
        if not self._config.enabled:
            return
        bucket = bucket or self.bucket(action)
        wait = await self._store.take(f"{action}:{key}", bucket.per_second, bucket.burst, cost)
        if wait > 0:
            raise limit_exceeded(int(math.ceil(wait * 1000)) if math.isfinite(wait) else 3_600_000)

    async def give_back(self, action: str, key: str, cost: float = 1.0) -> None:
        """Return what check took, for an attempt that turned out not to count (a good password)."""
        if not self._config.enabled:
            return
        bucket = self.bucket(action)
        await self._store.take(f"{action}:{key}", bucket.per_second, bucket.burst, -cost)
