"""Two Whispr servers federating: separate processes, ports and databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest

from bench.servers import REPO_ROOT, PostgresAdmin, RunningServer, free_port, start_whispr, wait_ready
from federation.client import FederationClient
from homeserver.config import FederationConfig
from homeserver.events.crypto import load_or_create_signing_key
from tests.conftest import POSTGRES_URL, need

V3 = "/_matrix/client/v3"
_txn = itertools.count()


def federation_config() -> dict[str, Any]:
    return {"federation": {"enabled": True, "verify_tls": False, "allowed_private_ranges": ["127.0.0.0/8"],
                           "destination_min_retry_ms": 300, "destination_max_retry_ms": 2000}}


class Client:
    def __init__(self, session: aiohttp.ClientSession, server: RunningServer, user_id: str, token: str) -> None:
        self.session, self.server, self.user_id = session, server, user_id
        self.h = {"Authorization": f"Bearer {token}"}
        self.since: str | None = None

    @classmethod
    async def register(cls, session: aiohttp.ClientSession, server: RunningServer, name: str) -> "Client":
        url = server.base_url + V3 + "/register"
        body = {"username": name, "password": "long enough pw"}
        first = await (await session.post(url, json=body)).json()
        reg = await (await session.post(url, json={**body, "auth": {"type": "m.login.dummy",
                                                                     "session": first["session"]}})).json()
        return cls(session, server, reg["user_id"], reg["access_token"])

    async def call(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        resp = await self.session.request(method, self.server.base_url + V3 + path, headers=self.h, **kw)
        body = await resp.json()
        assert resp.status == expect, (method, path, resp.status, body)
        return body

    async def send(self, room: str, body: str) -> str:
        return (await self.call("PUT", f"/rooms/{room}/send/m.room.message/t{next(_txn)}",
                                json={"msgtype": "m.text", "body": body}))["event_id"]

    async def sync_until(self, check: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """Incremental syncs until `check` holds for one response; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            params = {"timeout": "2000", "filter": '{"room": {"timeline": {"limit": 200}}}'}
            if self.since:
                params["since"] = self.since
            body = await self.call("GET", "/sync", params=params)
            self.since = body["next_batch"]
            # Synapse leaves empty sections out, and a sync may bring only presence: checks index freely.
            rooms = body.setdefault("rooms", {})
            for section in ("join", "invite", "leave", "knock"):
                rooms.setdefault(section, {})
            body.setdefault("presence", {"events": []})
            if check(body):
                return body
        pytest.fail(f"{self.user_id}: condition not met within {timeout} s")

    async def collect_messages(self, room: str, want: int, timeout: float = 60) -> list[str]:
        """Message bodies from others in the room, as syncs deliver them, until `want` arrived."""
        got: list[str] = []

        def check(body: dict[str, Any]) -> bool:
            events = body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
            got.extend(e["content"]["body"] for e in events
                       if e["type"] == "m.room.message" and e["sender"] != self.user_id)
            return len(got) >= want

        await self.sync_until(check, timeout)
        return got


def membership_in_timeline(room: str, user_id: str, membership: str) -> Callable[[dict[str, Any]], bool]:
    """A sync_until check: the user's membership became `membership` in the room's timeline."""
    def check(body: dict[str, Any]) -> bool:
        return any(e.get("state_key") == user_id and e["content"].get("membership") == membership
                   for e in body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", []))
    return check


async def users_on_both(session: aiohttp.ClientSession, a: RunningServer, name_a: str, b: RunningServer,
                        name_b: str) -> tuple[Client, Client]:
    """One new user on each server, each past a first sync."""
    first, second = await Client.register(session, a, name_a), await Client.register(session, b, name_b)
    await first.sync_until(lambda _: True)
    await second.sync_until(lambda _: True)
    return first, second


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Server A on SQLite, server B on PostgreSQL (when available)."""
    need(POSTGRES_URL, "postgres")
    port_a, port_b = free_port(), free_port()
    a = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{port_a}", extra_config=federation_config())
    try:
        b = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{port_b}", db="postgres",
                                    pg=PostgresAdmin(POSTGRES_URL), extra_config=federation_config())
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def test_whispr_to_whispr_story(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")

        # A's room: invite across servers, bob joins.
        room = (await alice.call("POST", "/createRoom", json={"name": "A's room", "preset": "private_chat"}))["room_id"]
        await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
        await bob.sync_until(lambda body: room in body["rooms"]["invite"])
        await bob.call("POST", f"/join/{room}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))

        # 100 messages each way, in order.
        for i in range(100):
            await alice.send(room, f"a{i}")
        assert await bob.collect_messages(room, 100) == [f"a{i}" for i in range(100)]
        for i in range(100):
            await bob.send(room, f"b{i}")
        assert await alice.collect_messages(room, 100) == [f"b{i}" for i in range(100)]

        # Topic change, typing and receipts cross too.
        await alice.call("PUT", f"/rooms/{room}/state/m.room.topic", json={"topic": "federated"})
        await bob.sync_until(lambda body: any(
            e["type"] == "m.room.topic" and e["content"]["topic"] == "federated"
            for e in body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])))
        await bob.call("PUT", f"/rooms/{room}/typing/{bob.user_id}", json={"typing": True, "timeout": 20000})
        await alice.sync_until(lambda body: any(
            e["type"] == "m.typing" and bob.user_id in e["content"]["user_ids"]
            for e in body["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])))
        last = await alice.send(room, "read this")
        await bob.collect_messages(room, 1)
        await bob.call("POST", f"/rooms/{room}/receipt/m.read/{last}", json={})
        await alice.sync_until(lambda body: any(
            e["type"] == "m.receipt" and bob.user_id in e["content"].get(last, {}).get("m.read", {})
            for e in body["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])))

        # B's room, public: alice joins it by ID without an invite.
        room_b = (await bob.call("POST", "/createRoom",
                                 json={"preset": "public_chat", "room_version": "11"}))["room_id"]
        await alice.call("POST", f"/join/{room_b}")
        await alice.send(room_b, "hello B")
        assert await bob.collect_messages(room_b, 1) == ["hello B"]

        # Leaves both ways.
        await bob.call("POST", f"/rooms/{room}/leave")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "leave"))
        await alice.call("POST", f"/rooms/{room_b}/leave")
        members = await bob.call("GET", f"/rooms/{room_b}/joined_members")
        deadline = time.monotonic() + 20
        while alice.user_id in members["joined"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            members = await bob.call("GET", f"/rooms/{room_b}/joined_members")
        assert alice.user_id not in members["joined"]


async def test_peer_down_then_back_gets_everything_in_order(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, a, "alice")
        bob = await Client.register(session, b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await bob.call("POST", f"/join/{room}")
        await bob.sync_until(lambda _: True)
        await alice.send(room, "before")
        assert await bob.collect_messages(room, 1) == ["before"]

        # B is killed; A keeps sending (its queue backs off); B comes back on the same port and data.
        os.killpg(b.process.pid, signal.SIGKILL)
        b.process.wait(10)
        for i in range(30):
            await alice.send(room, f"while down {i}")
        await asyncio.sleep(3)
        await asyncio.to_thread(restart, b)
        got = await bob.collect_messages(room, 30, timeout=60)
        assert got == [f"while down {i}" for i in range(30)]
        # no duplicates later either
        await alice.send(room, "after")
        assert await bob.collect_messages(room, 1) == ["after"]


async def test_rejecting_a_remote_invite(pair: tuple[RunningServer, RunningServer]) -> None:
    """Bob (B) declines alice's (A) invite: A's room records the leave, bob is out, a new invite works."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
        await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
        await bob.sync_until(lambda body: room in body["rooms"]["invite"])

        await bob.call("POST", f"/rooms/{room}/leave")  # declining is leaving from "invite"
        await bob.sync_until(lambda body: room in body["rooms"]["leave"] and room not in body["rooms"]["invite"])
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "leave"))
        members = await alice.call("GET", f"/rooms/{room}/members")
        states = {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}
        assert states == {alice.user_id: "join", bob.user_id: "leave"}
        assert (await bob.call("PUT", f"/rooms/{room}/send/m.room.message/declined", expect=403,
                               json={"msgtype": "m.text", "body": "x"}))["errcode"] == "M_FORBIDDEN"

        # The room is not spoilt for him: invited again, he joins and talks.
        await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
        await bob.sync_until(lambda body: room in body["rooms"]["invite"])
        await bob.call("POST", f"/join/{room}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))
        await bob.send(room, "second time lucky")
        assert await alice.collect_messages(room, 1) == ["second time lucky"]


async def page_back(client: Client, room: str, limit: int) -> list[dict[str, Any]]:
    """Every event /messages gives, newest first, paging backwards from now until no `end`."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(100):
        params = {"dir": "b", "limit": str(limit), **({"from": token} if token else {})}
        page = await client.call("GET", f"/rooms/{room}/messages", params=params)
        events += page["chunk"]
        token = page.get("end")
        if token is None:
            return events
    pytest.fail("/messages never ended")


async def test_history_from_before_the_join_is_backfilled(pair: tuple[RunningServer, RunningServer]) -> None:
    """Bob (B) joins a room of A that has history; paging back on B fetches it over federation,
    in order, once, down to the room's creation; /sync does not report it as new."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, a, "alice")
        bob = await Client.register(session, b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat", "name": "old"}))["room_id"]
        for i in range(30):
            await alice.send(room, f"old {i}")
        await alice.call("PUT", f"/rooms/{room}/redact/{await alice.send(room, 'oops')}/r1", json={})
        await bob.sync_until(lambda _: True)
        await bob.call("POST", f"/join/{room}")
        await bob.send(room, "hi all")
        body = await bob.sync_until(lambda body: room in body["rooms"]["join"])
        assert await alice.collect_messages(room, 1) == ["hi all"]  # A has it too before both page back

        seen_on_a = await page_back(alice, room, 50)
        seen_on_b = await page_back(bob, room, 7)
        ids_b = [e["event_id"] for e in seen_on_b]
        assert len(ids_b) == len(set(ids_b)), "an event came twice"
        assert ids_b == [e["event_id"] for e in seen_on_a]  # the same history, in the same order
        assert seen_on_b[-1]["type"] == "m.room.create"
        bodies = [e["content"].get("body") for e in reversed(seen_on_b) if e["type"] == "m.room.message"]
        assert bodies == [f"old {i}" for i in range(30)] + [None, "hi all"]  # the redacted one has no body

        # Backfilled history is not news: an incremental sync after the join does not carry it.
        since = body["next_batch"]
        after = await bob.call("GET", "/sync", params={"since": since, "timeout": "0"})
        timeline = after["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
        assert not [e for e in timeline if e["content"].get("body", "").startswith("old")]
        assert (await bob.call("GET", "/sync", params={"since": "s-3_0"}, expect=400))["errcode"] == \
            "M_INVALID_PARAM"


async def test_history_hidden_by_visibility_stays_hidden_over_federation(
        pair: tuple[RunningServer, RunningServer]) -> None:
    """Under `joined` visibility, what was said before B's user joined is not readable on B:
    A serves it redacted and B does not show it."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, a, "alice")
        bob = await Client.register(session, b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await alice.call("PUT", f"/rooms/{room}/state/m.room.history_visibility",
                         json={"history_visibility": "joined"})
        secrets_ = [await alice.send(room, f"secret {i}") for i in range(5)]
        await bob.call("POST", f"/join/{room}")
        await alice.send(room, "welcome")
        await bob.collect_messages(room, 1)
        events = await page_back(bob, room, 10)
        assert [e["content"].get("body") for e in events if e["type"] == "m.room.message"] == ["welcome"]
        for event_id in secrets_:
            await bob.call("GET", f"/rooms/{room}/event/{event_id}", expect=404)
        # alice, who was there, still reads everything.
        mine = [e["content"].get("body") for e in await page_back(alice, room, 50) if e["type"] == "m.room.message"]
        assert mine == ["welcome"] + [f"secret {i}" for i in reversed(range(5))]
        # What A answers B's server on /backfill: the secrets' shells only.
        b_as_client = FederationClient(b.server_name, load_or_create_signing_key(b.data_dir / "data" / "signing.key"),
                                       FederationConfig(verify_tls=False, allowed_private_ranges=["127.0.0.0/8"]))
        await b_as_client.start()
        try:
            served = await b_as_client.get_json(a.server_name, f"/_matrix/federation/v1/backfill/{room}",
                                                {"v": secrets_[-1], "limit": "50"})
        finally:
            await b_as_client.close()
        messages = [pdu for pdu in served["pdus"] if pdu["type"] == "m.room.message"]
        assert len(messages) == 5 and all(pdu["content"] == {} for pdu in messages)


def restart(server: RunningServer) -> None:
    """Start a killed server again from its own config (same port, data directory and database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPR_")}
    with open(server.log_path, "ab") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "--config", str(server.config_path)], cwd=REPO_ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server.pid = server.process.pid
    wait_ready(server.base_url, server.process, 60, server.log_path)


async def test_remote_profiles_aliases_and_profile_changes(pair: tuple[RunningServer, RunningServer]) -> None:
    """Profiles and aliases of the other server are looked up over federation; a profile change
    reaches the rooms a user shares with the other server."""
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice, bob = await users_on_both(session, a, "alice", b, "bob")
        await alice.call("PUT", f"/profile/{alice.user_id}/displayname", json={"displayname": "Alice of A"})
        assert await bob.call("GET", f"/profile/{alice.user_id}") == {"displayname": "Alice of A"}
        assert await bob.call("GET", f"/profile/{alice.user_id}/displayname") == {"displayname": "Alice of A"}
        missing = await bob.call("GET", f"/profile/{alice.user_id}/avatar_url", expect=404)
        assert missing["errcode"] == "M_NOT_FOUND"
        nobody = a.server_name
        assert (await bob.call("GET", f"/profile/@nobody:{nobody}", expect=404))["errcode"] == "M_NOT_FOUND"

        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat",
                                                              "room_alias_name": "lobby"}))["room_id"]
        alias = f"#lobby:{a.server_name}"
        found = await bob.call("GET", f"/directory/room/{alias.replace('#', '%23')}")
        assert found["room_id"] == room and a.server_name in found["servers"]
        unknown = await bob.call("GET", f"/directory/room/%23nothing:{a.server_name}", expect=404)
        assert unknown["errcode"] == "M_NOT_FOUND"

        await bob.call("POST", f"/join/{alias.replace('#', '%23')}")
        await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))
        await alice.call("PUT", f"/profile/{alice.user_id}/displayname", json={"displayname": "Alice, renamed"})

        def renamed(body: dict[str, Any]) -> bool:
            events = body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
            return any(e["type"] == "m.room.member" and e["state_key"] == alice.user_id
                       and e["content"].get("displayname") == "Alice, renamed" for e in events)
        await bob.sync_until(renamed)
