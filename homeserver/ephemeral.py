"""Short-lived shared state: UIA sessions, login challenges, rate-limit buckets.

Two backends with one interface: in memory (one process, the default) and
Redis (required when several processes share one database).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Protocol


class Ephemeral(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def incr(self, key: str, ttl_s: float) -> int:
        """Atomically add 1 to a counter (new counters start at 0 and live ttl_s); return the new value."""
        ...

    async def take(self, key: str, rate: float, burst: int, cost: float = 1.0) -> float:
        """Token bucket: take `cost` tokens; 0 if allowed, else seconds until it would be.
        A negative cost gives tokens back (never beyond `burst` once the bucket refills)."""
        ...

    async def close(self) -> None: ...


class MemoryEphemeral:
    def __init__(self, clock: Any = time.monotonic) -> None:
        self._values: dict[str, tuple[float, str]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._clock = clock
        self._ops = 0

    def _sweep(self) -> None:
        # Amortised clean-up so abandoned keys do not pile up.
        self._ops += 1
        if self._ops % 1024:
            return
        now = self._clock()
        for k in [k for k, (exp, _) in self._values.items() if exp <= now]:
            del self._values[k]
        for k in [k for k, (_, ts) in self._buckets.items() if now - ts > 3600]:
            del self._buckets[k]

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self._values.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._values[key]
            return None
        return json.loads(item[1])

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self._sweep()
        # Stored serialised so both backends hand out independent copies.
        self._values[key] = (self._clock() + ttl_s, json.dumps(value))

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def incr(self, key: str, ttl_s: float) -> int:
        self._sweep()
        now = self._clock()
        expires, raw = self._values.get(key, (now, "0"))
        count = 1 if expires <= now else int(json.loads(raw)) + 1
        self._values[key] = (expires if count > 1 else now + ttl_s, json.dumps(count))
        return count

    async def take(self, key: str, rate: float, burst: int, cost: float = 1.0) -> float:
        self._sweep()
        now = self._clock()
        tokens, ts = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - ts) * rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / rate if rate > 0 else math.inf

    async def close(self) -> None:
        return None


# Atomic token bucket in Redis: KEYS[1]; ARGV rate, burst, cost, now.
_TAKE_LUA = """
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3]); local now = tonumber(ARGV[4])
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""


# Atomic counter with a TTL set when it is created: KEYS[1]; ARGV ttl in ms.
_INCR_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class RedisEphemeral:
    def __init__(self, url: str, prefix: str = "whispr:") -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._take = self._redis.register_script(_TAKE_LUA)
        self._incr = self._redis.register_script(_INCR_LUA)

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._prefix + key)
        return None if raw is None else json.loads(raw)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        await self._redis.set(self._prefix + key, json.dumps(value), px=max(1, int(ttl_s * 1000)))

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)

    async def incr(self, key: str, ttl_s: float) -> int:
        return int(await self._incr(keys=[self._prefix + key], args=[max(1, int(ttl_s * 1000))]))

    async def take(self, key: str, rate: float, burst: int, cost: float = 1.0) -> float:
        if rate <= 0:
            return math.inf
        wait = await self._take(keys=[self._prefix + "rl:" + key], args=[rate, burst, cost, time.time()])
        return float(wait)

    async def close(self) -> None:
        await self._redis.aclose()


def make_ephemeral(redis_url: str, prefix: str = "whispr:") -> Ephemeral:
    return RedisEphemeral(redis_url, prefix) if redis_url else MemoryEphemeral()
