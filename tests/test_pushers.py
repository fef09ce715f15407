"""Pushers and delivery to a push gateway (an aiohttp server in the test speaking the Push
Gateway API), including across a restart of the homeserver and a gateway that rejects a pushkey."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from client_api.http import HS
from homeserver.app import make_app
from tests.conftest import WhisprTestServer
from tests.rooms_helpers import User

PUSH = {"push": {"allowed_private_ranges": ["127.0.0.0/8"], "gateway_min_retry_ms": 50,
                 "gateway_max_retry_ms": 200}}


class Gateway:
    """A push gateway: records each notification; `status` and `reject` shape its answers."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.reject: set[str] = set()
        self.arrived = asyncio.Event()
        self.server: TestServer | None = None

    async def notify(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        self.received.append(body["notification"])
        self.arrived.set()
        keys = [d["pushkey"] for d in body["notification"]["devices"] if d["pushkey"] in self.reject]
        return web.json_response({"rejected": keys})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/_matrix/push/v1/notify", self.notify)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return f"http://127.0.0.1:{self.server.port}/_matrix/push/v1/notify"

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async def enough() -> None:
            while len(self.received) < n:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), timeout)
        return self.received


@pytest.fixture
async def gateway() -> Any:
    gw = Gateway()
    gw.url = await gw.start()  # type: ignore[attr-defined]
    yield gw
    assert gw.server is not None
    await gw.server.close()


def pusher(url: str, pushkey: str = "key-1", **extra: Any) -> dict[str, Any]:
    return {"kind": "http", "app_id": "org.example.app", "pushkey": pushkey, "app_display_name": "App",
            "device_display_name": "Phone", "lang": "en", "data": {"url": url, **extra.pop("data", {})}, **extra}


async def two_in_a_room(client: Any) -> tuple[User, User, str]:
    alice, bob = await User.new(client, "alice"), await User.new(client, "bob")
    room = await alice.create_room(invite=[bob.user_id])
    await bob.call("POST", f"/join/{room}")
    return alice, bob, room


async def test_pusher_api(serve: Callable[..., Any], gateway: Any) -> None:
    client = await serve(**PUSH)
    bob = await User.new(client, "bob")
    await bob.call("POST", "/pushers/set", json=pusher(gateway.url, profile_tag="t"))
    listed = (await bob.call("GET", "/pushers"))["pushers"]
    assert listed == [{"app_id": "org.example.app", "pushkey": "key-1", "kind": "http", "app_display_name": "App",
                       "device_display_name": "Phone", "profile_tag": "t", "lang": "en",
                       "data": {"url": gateway.url}}]
    await bob.call("POST", "/pushers/set", json=pusher(gateway.url, device_display_name="New phone"))
    assert [p["device_display_name"] for p in (await bob.call("GET", "/pushers"))["pushers"]] == ["New phone"]
    # the same app and pushkey for another user takes it over, unless appended
    carol = await User.new(client, "carol")
    await carol.call("POST", "/pushers/set", json=pusher(gateway.url, append=True))
    assert len((await bob.call("GET", "/pushers"))["pushers"]) == 1
    await carol.call("POST", "/pushers/set", json=pusher(gateway.url))
    assert (await bob.call("GET", "/pushers"))["pushers"] == []
    await carol.call("POST", "/pushers/set", json={"app_id": "org.example.app", "pushkey": "key-1", "kind": None})
    assert (await carol.call("GET", "/pushers"))["pushers"] == []
    for bad, errcode in [({**pusher(gateway.url), "kind": "email"}, "M_INVALID_PARAM"),
                         (pusher("http://127.0.0.1:1/elsewhere"), "M_INVALID_PARAM"),
                         (pusher(gateway.url, data={"format": "full"}), "M_INVALID_PARAM"),
                         ({k: v for k, v in pusher(gateway.url).items() if k != "app_id"}, "M_MISSING_PARAM"),
                         ({**pusher(gateway.url), "data": {}}, "M_INVALID_PARAM"),
                         ({**pusher(gateway.url), "app_id": "x" * 65}, "M_INVALID_PARAM")]:
        assert (await bob.call("POST", "/pushers/set", json=bad, expect=400))["errcode"] == errcode


async def test_pushes_reach_the_gateway_with_counts(serve: Callable[..., Any], gateway: Any) -> None:
    client = await serve(**PUSH)
    alice, bob, room = await two_in_a_room(client)
    await bob.call("POST", "/pushers/set", json=pusher(gateway.url, data={"format": "event_id_only", "x": 1}))
    first = await alice.send(room, "hello bob")
    second = await alice.send(room, "again")
    got = await gateway.wait_for(2)
    assert [n["event_id"] for n in got] == [first, second]
    n = got[1]
    assert n["room_id"] == room and n["counts"] == {"unread": 2, "missed_calls": 0}
    assert "content" not in n and "sender" not in n  # event_id_only
    device = n["devices"][0]
    assert device["app_id"] == "org.example.app" and device["pushkey"] == "key-1"
    assert device["data"] == {"format": "event_id_only", "x": 1}  # without the url
    assert device["tweaks"] == {"sound": "default"} and n["prio"] == "high"  # a 1:1 room
    # alice's own message is not pushed to her, and a full-format pusher gets the content
    await alice.call("POST", "/pushers/set", json=pusher(gateway.url, pushkey="alice-key"))
    await bob.send(room, "to alice")
    full = (await gateway.wait_for(3))[2]
    assert full["devices"][0]["pushkey"] == "alice-key"
    assert full["content"]["body"] == "to alice" and full["sender"] == bob.user_id and full["type"] == "m.room.message"


async def test_a_rejected_pushkey_is_removed(serve: Callable[..., Any], gateway: Any) -> None:
    client = await serve(**PUSH)
    alice, bob, room = await two_in_a_room(client)
    await bob.call("POST", "/pushers/set", json=pusher(gateway.url))
    gateway.reject.add("key-1")
    await alice.send(room, "hi")
    await gateway.wait_for(1)
    for _ in range(100):
        if not (await bob.call("GET", "/pushers"))["pushers"]:
            break
        await asyncio.sleep(0.05)
    assert (await bob.call("GET", "/pushers"))["pushers"] == []


async def test_no_push_is_lost_across_a_restart(aiohttp_client: Any, make_config: Callable[..., Any],
                                                gateway: Any) -> None:
    config = make_config(**PUSH)
    client = await aiohttp_client(WhisprTestServer(make_app(config), config))
    alice, bob, room = await two_in_a_room(client)
    await bob.call("POST", "/pushers/set", json=pusher(gateway.url))
    gateway.status = 503  # the gateway is down: retried with backoff, nothing delivered
    sent = [await alice.send(room, f"m{i}") for i in range(3)]
    await asyncio.sleep(0.3)
    assert gateway.received == []
    await client.close()  # the homeserver stops with three pushes pending
    gateway.status = 200
    client = await aiohttp_client(WhisprTestServer(make_app(config), config))
    got = await gateway.wait_for(3)
    assert [n["event_id"] for n in got] == sent
    # and after another restart nothing is sent twice
    await client.close()
    client = await aiohttp_client(WhisprTestServer(make_app(config), config))
    bob.client = client
    alice.client = client
    last = await alice.send(room, "after")
    got = await gateway.wait_for(4)
    assert [n["event_id"] for n in got] == [*sent, last]
    await asyncio.sleep(0.2)
    assert len(gateway.received) == 4


async def test_deactivation_removes_the_pushers(serve: Callable[..., Any], gateway: Any) -> None:
    from tests.test_conformance import deactivate
    client = await serve(**PUSH)
    alice, bob, room = await two_in_a_room(client)
    await bob.call("POST", "/pushers/set", json=pusher(gateway.url))
    resp = await deactivate(client, bob.token, "bob")
    assert resp.status == 200, await resp.text()
    await alice.send(room, "gone")
    await asyncio.sleep(0.3)
    assert gateway.received == []
    assert await client.app[HS].store.push.pushers(bob.user_id) == []


@pytest.mark.parametrize("backend", ["postgres+redis"], indirect=True)  # several workers need both
async def test_one_worker_delivers_what_another_stored(serve: Callable[..., Any], backend: dict[str, Any],
                                                       gateway: Any) -> None:
    delivering = await serve(push={**PUSH["push"], "pusher_refresh_s": 0.2})
    other = await serve(push={**PUSH["push"], "deliver": False})
    alice, bob, room = await two_in_a_room(other)
    await bob.call("POST", "/pushers/set", json=pusher(gateway.url))  # set on the worker that does not deliver
    sent = await alice.send(room, "via the other worker")
    got = await gateway.wait_for(1)
    assert [n["event_id"] for n in got] == [sent]
    assert delivering is not None
