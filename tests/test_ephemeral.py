"""The ephemeral store (memory and Redis): TTLs and token buckets behave the same."""

from __future__ import annotations

import asyncio
import secrets
from typing import AsyncIterator

import pytest

from homeserver.config import BucketConfig, RateLimitsConfig
from homeserver.ephemeral import Ephemeral, MemoryEphemeral, RedisEphemeral
from homeserver.errors import MatrixError
from homeserver.ratelimit import RateLimiter
from tests.conftest import REDIS_URL, need


@pytest.fixture(params=["memory", "redis"])
async def eph(request: pytest.FixtureRequest) -> AsyncIterator[Ephemeral]:
    if request.param == "memory":
        store: Ephemeral = MemoryEphemeral()
    else:
        need(REDIS_URL, "redis")
        store = RedisEphemeral(REDIS_URL, prefix=f"whispr-test-{secrets.token_hex(4)}:")
    yield store
    await store.close()


async def test_put_get_delete_and_expiry(eph: Ephemeral) -> None:
    await eph.put("k", {"a": 1}, 0.3)
    assert await eph.get("k") == {"a": 1}
    await asyncio.sleep(0.5)
    assert await eph.get("k") is None
    await eph.put("k", {"a": 2}, 10)
    await eph.delete("k")
    assert await eph.get("k") is None


async def test_token_bucket_allows_burst_then_refuses(eph: Ephemeral) -> None:
    waits = [await eph.take("bucket", rate=1.0, burst=3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.5 < waits[3] <= 1.0
    assert await eph.take("other", rate=1.0, burst=3) == 0.0  # keys are independent


async def test_rate_limiter_raises_m_limit_exceeded(eph: Ephemeral) -> None:
    limiter = RateLimiter(RateLimitsConfig(login=BucketConfig(0.5, 2)), eph)
    await limiter.check("login", "1.2.3.4")
    await limiter.check("login", "1.2.3.4")
    with pytest.raises(MatrixError) as err:
        await limiter.check("login", "1.2.3.4")
    assert err.value.status == 429 and err.value.errcode == "M_LIMIT_EXCEEDED"
    assert 0 < err.value.extra["retry_after_ms"] <= 2000


async def test_rate_limiter_disabled_never_refuses(eph: Ephemeral) -> None:
    limiter = RateLimiter(RateLimitsConfig(enabled=False, login=BucketConfig(0.001, 1)), eph)
    for _ in range(5):
        await limiter.check("login", "ip")
