"""The notifier: keyed wake-ups, in-order positions, and relaying through Redis."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from homeserver.sync import notifier as notifier_module
from homeserver.sync.notifier import Notifier, RedisNotifier
from tests.conftest import REDIS_URL, need


async def test_wakes_only_matching_keys() -> None:
    n = Notifier()
    room_waiter = asyncio.create_task(n.wait(["!room"], 5))
    other_waiter = asyncio.create_task(n.wait(["@other:hs"], 0.3))
    await asyncio.sleep(0)
    await n.notify(1, "!room")
    assert await room_waiter is True
    assert await other_waiter is False
    assert n.position == 1 and n.room_changed_since("!room", 0) and not n.user_changed_since("@other:hs", 0)
    assert n.waiting() == 0


async def test_out_of_order_notifications_hold_the_position() -> None:
    n = Notifier()
    waiter = asyncio.create_task(n.wait(["!b"], 5))
    await asyncio.sleep(0)
    await n.notify(2, "!b")
    # stream 1 is not known yet, so the position must not pass it, and !b's waiter waits for it
    assert n.position == 0
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await n.notify(1, "!a")
    assert n.position == 2 and await waiter is True


async def test_a_gap_is_given_up_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notifier_module, "GAP_TIMEOUT_S", 0.1)
    n = Notifier()
    await n.notify(3, "!c")
    assert n.position == 0
    await asyncio.sleep(0.3)
    assert n.position == 3
    await n.close()


async def test_redis_relays_between_processes() -> None:
    need(REDIS_URL, "redis")
    channel = f"whispr-test-{secrets.token_hex(4)}"
    a, b = RedisNotifier(REDIS_URL, channel), RedisNotifier(REDIS_URL, channel)
    await a.start()
    await b.start()
    try:
        await asyncio.sleep(0.1)
        waiter = asyncio.create_task(b.wait(["@u:hs"], 5))
        await asyncio.sleep(0)
        await a.notify(1, "!room", ["@u:hs"])
        assert await waiter is True
        assert b.position == 1 and b.user_changed_since("@u:hs", 0)
    finally:
        await a.close()
        await b.close()
