"""An aiohttp load client for the Matrix Client-Server API: register and log in users.

Every phase runs ``concurrency`` workers over one keep-alive connection pool and
returns a :class:`PhaseResult` (wall time, one latency per operation, failures).
A registration is the standard two-step user-interactive auth: a first
``POST /register`` without ``auth`` that must answer 401 with a ``session``, then the
same body with ``auth: {type: m.login.dummy, session}``; its latency covers both.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp

REGISTER_PATH = "/_matrix/client/v3/register"
LOGIN_PATH = "/_matrix/client/v3/login"
MAX_KEPT_ERRORS = 10


@dataclass
class Account:
    username: str
    password: str
    user_id: str = ""
    access_token: str = ""
    device_id: str = ""


@dataclass
class PhaseResult:
    """Outcome of one load phase (e.g. "register 200 users at concurrency 10")."""

    name: str
    ops: int
    concurrency: int
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # successful operations only
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first MAX_KEPT_ERRORS failures

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Successful operations per second of wall time."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in seconds (``q`` in 0..100), nearest-rank."""
        if not self.latencies_s:
            return float("nan")
        data = sorted(self.latencies_s)
        rank = max(0, min(len(data) - 1, math.ceil(q / 100 * len(data)) - 1))
        return data[rank]

    @property
    def mean_latency_s(self) -> float:
        return statistics.fmean(self.latencies_s) if self.latencies_s else float("nan")

    def record_error(self, message: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(message)


class RequestFailed(Exception):
    """An operation got an unexpected answer; the message is kept in PhaseResult.errors."""


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        text = await resp.text(errors="replace")
        raise RequestFailed(f"HTTP {resp.status}, not JSON: {text[:200]!r}") from None
    if not isinstance(data, dict):
        raise RequestFailed(f"HTTP {resp.status}, JSON is not an object: {str(data)[:200]}")
    return data


async def run_phase(name: str, count: int, concurrency: int,
                    op: Callable[[aiohttp.ClientSession, int], Awaitable[None]],
                    timeout_s: float = 120.0) -> PhaseResult:
    """Run ``op(session, i)`` for i in 0..count-1 with ``concurrency`` workers; time it all."""
    result = PhaseResult(name=name, ops=count, concurrency=concurrency)
    next_index = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in next_index:  # shared iterator: each index is taken exactly once
            start = time.perf_counter()
            try:
                await op(session, i)
            except RequestFailed as e:
                result.record_error(f"#{i}: {e}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                result.record_error(f"#{i}: {type(e).__name__}: {e}")
            else:
                result.latencies_s.append(time.perf_counter() - start)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(max(1, min(concurrency, count)))))
        result.wall_s = time.perf_counter() - start
    return result


async def register_users(base_url: str, accounts: list[Account], concurrency: int,
                         device_name: str = "bench") -> PhaseResult:
    """Register every account (two-step UIA with m.login.dummy); fills user_id/access_token."""
    url = base_url.rstrip("/") + REGISTER_PATH

    async def op(session: aiohttp.ClientSession, i: int) -> None:
        acct = accounts[i]
        body: dict[str, Any] = {"username": acct.username, "password": acct.password,
                                "initial_device_display_name": device_name}
        async with session.post(url, json=body) as resp:
            data = await _json(resp)
        if resp.status == 200:  # a server that asks for no auth at all
            _fill(acct, data)
            return
        if resp.status != 401 or "session" not in data:
            raise RequestFailed(f"register step 1: HTTP {resp.status} {_brief(data)}")
        flows = [f.get("stages", []) for f in data.get("flows", [])]
        if ["m.login.dummy"] not in flows:
            raise RequestFailed(f"register step 1: no m.login.dummy flow offered: {flows}")
        body["auth"] = {"type": "m.login.dummy", "session": data["session"]}
        async with session.post(url, json=body) as resp:
            data = await _json(resp)
        if resp.status != 200 or "user_id" not in data:
            raise RequestFailed(f"register step 2: HTTP {resp.status} {_brief(data)}")
        _fill(acct, data)

    return await run_phase("register", len(accounts), concurrency, op)


async def login_users(base_url: str, accounts: list[Account], count: int, concurrency: int,
                      device_name: str = "bench-login") -> PhaseResult:
    """Log in ``count`` times with m.login.password, cycling through ``accounts``.

    Each login creates a new device and access token, as a real client's would.
    """
    if not accounts:
        raise ValueError("no accounts to log in with")
    url = base_url.rstrip("/") + LOGIN_PATH

    async def op(session: aiohttp.ClientSession, i: int) -> None:
        acct = accounts[i % len(accounts)]
        body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": acct.username},
                "password": acct.password, "initial_device_display_name": device_name}
        async with session.post(url, json=body) as resp:
            data = await _json(resp)
        if resp.status != 200 or "access_token" not in data:
            raise RequestFailed(f"login {acct.username}: HTTP {resp.status} {_brief(data)}")

    return await run_phase("login", count, concurrency, op)


def _fill(acct: Account, data: dict[str, Any]) -> None:
    acct.user_id = str(data.get("user_id", ""))
    acct.access_token = str(data.get("access_token", ""))
    acct.device_id = str(data.get("device_id", ""))


def _brief(data: dict[str, Any]) -> str:
    if "errcode" in data:
        return f"{data['errcode']}: {data.get('error', '')}"[:200]
    return str(data)[:200]


# --------------------------------------------------------------------------- rooms and messages
# Used by bench_rooms; every call takes an open session so that callers choose the pool.

ROOM_PATH = "/_matrix/client/v3/rooms"


async def matrix_call(session: aiohttp.ClientSession, method: str, url: str, token: str,
                      body: dict[str, Any] | None = None, params: dict[str, str] | None = None,
                      what: str = "") -> dict[str, Any]:
    """One authenticated request that must answer 200 with a JSON object; else RequestFailed."""
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, json=body, params=params, headers=headers) as resp:
        data = await _json(resp)
    if resp.status != 200:
        raise RequestFailed(f"{what or method + ' ' + url}: HTTP {resp.status} {_brief(data)}")
    return data


async def create_room(session: aiohttp.ClientSession, base_url: str, acct: Account,
                      preset: str = "public_chat", name: str = "") -> str:
    """POST /createRoom; returns the room ID (public_chat lets anyone POST /join it)."""
    body: dict[str, Any] = {"preset": preset}
    if name:
        body["name"] = name
    data = await matrix_call(session, "POST", base_url.rstrip("/") + "/_matrix/client/v3/createRoom",
                             acct.access_token, body, what="createRoom")
    if "room_id" not in data:
        raise RequestFailed(f"createRoom: no room_id in {_brief(data)}")
    return str(data["room_id"])


async def join_room(session: aiohttp.ClientSession, base_url: str, acct: Account, room_id: str) -> None:
    url = base_url.rstrip("/") + "/_matrix/client/v3/join/" + urllib.parse.quote(room_id, safe="")
    await matrix_call(session, "POST", url, acct.access_token, {}, what=f"join {acct.username}")


def send_url(base_url: str, room_id: str, txn_id: str, event_type: str = "m.room.message") -> str:
    return (f"{base_url.rstrip('/')}{ROOM_PATH}/{urllib.parse.quote(room_id, safe='')}/send/"
            f"{urllib.parse.quote(event_type, safe='')}/{urllib.parse.quote(txn_id, safe='')}")


async def send_message(session: aiohttp.ClientSession, base_url: str, acct: Account, room_id: str,
                       txn_id: str, content: dict[str, Any]) -> str:
    """PUT /rooms/{room}/send/m.room.message/{txn}; returns the event ID."""
    data = await matrix_call(session, "PUT", send_url(base_url, room_id, txn_id), acct.access_token,
                             content, what=f"send {txn_id}")
    if "event_id" not in data:
        raise RequestFailed(f"send {txn_id}: no event_id in {_brief(data)}")
    return str(data["event_id"])


async def run_workers(name: str, workers: int, per_worker: int,
                      op: Callable[[aiohttp.ClientSession, int, int], Awaitable[None]],
                      timeout_s: float = 120.0) -> PhaseResult:
    """``workers`` tasks, each running ``op(session, worker, j)`` for j in 0..per_worker-1 in order.

    Unlike :func:`run_phase` (a shared queue of operations), each worker is one
    sequential client, e.g. one user sending its messages one after another.
    """
    result = PhaseResult(name=name, ops=workers * per_worker, concurrency=workers)
    connector = aiohttp.TCPConnector(limit=workers, limit_per_host=workers)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        for j in range(per_worker):
            start = time.perf_counter()
            try:
                await op(session, w, j)
            except RequestFailed as e:
                result.record_error(f"worker {w} #{j}: {e}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                result.record_error(f"worker {w} #{j}: {type(e).__name__}: {e}")
            else:
                result.latencies_s.append(time.perf_counter() - start)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, w) for w in range(workers)))
        result.wall_s = time.perf_counter() - start
    return result
