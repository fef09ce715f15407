"""Messages, fan-out and memory: Whispr against Synapse, on this machine, in the same run.

    python -m bench.bench_rooms [--db sqlite|postgres] [--rounds 2] [--quick] [--json FILE]

Whispr, Synapse and a floor (an aiohttp app answering ``{}``) are started once and stay
up; each round runs every phase on each server in turn (Whispr first in even rounds,
Synapse first in odd ones), with the same client and sizes:

  seq      one sender, --messages messages one after another in a room of its own
  conc     --senders users in one room, each sending --per-sender messages one after another
  fanout   --receivers members each holding a long-poll /sync; one sender sends
           --fanout-messages messages, each only after every receiver got the previous one
  sse      the same on Whispr's SSE stream (Synapse has none: its long-poll figure is shown)
  memory   --waiting-clients users each holding a /sync?timeout=60000 open: RSS before/after
  floor    the empty aiohttp app under the seq and conc loads

The report is a Markdown table (ratios oriented so that above 1 = Whispr better) and
the issue's targets marked met / not met. Exit status 1 if any request failed or any
delivery was missing, 2 if a server did not start. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp

from bench.client import (Account, PhaseResult, RequestFailed, create_room, join_room, matrix_call,
                          register_users, run_phase, run_workers, send_message, send_url)
from bench.servers import (SYNAPSE_VERSION, PostgresAdmin, RunningServer, ServerStartError,
                           postgres_cpu_seconds, start_floor, start_synapse, start_whispr, synapse_python)

PASSWORD = "bench-Passw0rd-123"
SYNC_PATH = "/_matrix/client/v3/sync"
SSE_PATH = "/_matrix/client/unstable/org.whispr/sync/stream"
# The same inline filter on both servers for every /sync and the SSE stream: incremental
# responses carry only new timeline events; presence (Synapse) is filtered out.
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": True}},
                          "presence": {"not_types": ["*"]}}, separators=(",", ":"))
FANOUT_LONGPOLL_MS = 30_000
MEMORY_LONGPOLL_MS = 60_000
STOP = 1_000_000  # the fan-out sequence number that tells receivers to stop
MAX_ERRORS = 10

SIZES = {
    "default": dict(messages=500, senders=20, per_sender=50, receivers=50, fanout_messages=20,
                    waiting_clients=200, warmup=20, rounds=2),
    "quick": dict(messages=50, senders=10, per_sender=5, receivers=10, fanout_messages=5,
                  waiting_clients=20, warmup=5, rounds=1),
}


# --------------------------------------------------------------------------- results


@dataclass
class SendPhase:
    """seq or conc: the client's view plus the server's CPU over the phase."""

    phase: PhaseResult
    cpu_s: float
    db_cpu_s: float | None  # PostgreSQL processes (--db postgres only)
    client_cpu_s: float

    def cpu_ms_per_op(self, with_db: bool = False) -> float:
        cpu = self.cpu_s + ((self.db_cpu_s or 0.0) if with_db else 0.0)
        return 1000 * cpu / self.phase.ok if self.phase.ok else float("nan")


@dataclass
class Fanout:
    mode: str  # "sync" (long-poll) or "sse"
    receivers: int
    messages: int
    latencies_s: list[float] = field(default_factory=list)  # one per (receiver, message) delivered
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    missing: list[str] = field(default_factory=list)  # "receiver r: message k", the first few
    send_latencies_s: list[float] = field(default_factory=list)  # the sender's PUTs
    wall_s: float = 0.0
    cpu_s: float = 0.0
    db_cpu_s: float | None = None
    client_cpu_s: float = 0.0
    syncs: int = 0  # responses (or SSE events) received during the measured part
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return _percentile(self.latencies_s, q)

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
        elif len(self.errors) == MAX_ERRORS:
            self.errors.append("... more errors")


@dataclass
class Memory:
    clients: int
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    opened: int = 0  # long-polls sent and not answered when RSS was read
    woken: int = 0  # clients whose sync returned the wake-up message
    wake_all_s: float = float("nan")  # from the wake-up send until the last client had it
    early_returns: int = 0  # long-polls answered before the wake-up (re-issued at once)
    early_samples: list[str] = field(default_factory=list)  # what such answers carried
    early_body: str = ""  # the first such answer, cut at 2,000 characters (JSON output only)
    errors: list[str] = field(default_factory=list)

    @property
    def kb_per_client(self) -> float:
        return (self.rss_after_kb - self.rss_before_kb) / self.clients if self.clients else float("nan")


@dataclass
class Round:
    round: int
    seq: SendPhase | None = None
    conc: SendPhase | None = None
    fanout: Fanout | None = None
    sse: Fanout | None = None
    memory: Memory | None = None


@dataclass
class Side:
    label: str  # Whispr, Synapse, floor
    server: RunningServer | None = None
    sender: Account | None = None
    senders: list[Account] = field(default_factory=list)
    receivers: list[Account] = field(default_factory=list)
    idlers: list[Account] = field(default_factory=list)
    rooms: dict[str, str] = field(default_factory=dict)
    # Each user's last /sync next_batch: later rounds go on from it, as a real client does
    # (a fresh initial sync could be answered from Synapse's 2-minute sync response cache).
    tokens: dict[str, str] = field(default_factory=dict)
    rss_fresh_kb: int = 0
    rss_end_kb: int = 0
    rounds: list[Round] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def is_floor(self) -> bool:
        return self.label == "floor"

    def fail(self, message: str) -> None:
        self.failures.append(message)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    rank = max(0, min(len(data) - 1, math.ceil(q / 100 * len(data)) - 1))
    return data[rank]


def _client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuMeter:
    """Server (and PostgreSQL, and load client) CPU seconds between start() and stop()."""

    def __init__(self, server: RunningServer, with_db: bool) -> None:
        self.server, self.with_db = server, with_db

    def start(self) -> None:
        self.s0 = self.server.cpu_seconds()
        self.d0 = postgres_cpu_seconds() if self.with_db else 0.0
        self.c0 = _client_cpu()

    def stop(self) -> tuple[float, float | None, float]:
        cpu = self.server.cpu_seconds() - self.s0
        db = postgres_cpu_seconds() - self.d0 if self.with_db else None
        return cpu, db, _client_cpu() - self.c0


# --------------------------------------------------------------------------- setup


def _session(limit: int = 0, read_timeout: float | None = 120.0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=read_timeout),
                                 read_bufsize=1 << 22)


async def setup_side(side: Side, args: argparse.Namespace, tag: str) -> None:
    """Register the users, create the rooms and join them (uncounted)."""
    server = side.server
    assert server is not None
    base = server.base_url
    prefix = f"r{tag}"
    side.sender = Account(f"{prefix}sender", PASSWORD)
    side.senders = [Account(f"{prefix}s{i}", PASSWORD) for i in range(args.senders)]
    side.receivers = [Account(f"{prefix}f{i}", PASSWORD) for i in range(args.receivers)]
    side.idlers = [Account(f"{prefix}w{i}", PASSWORD) for i in range(args.waiting_clients)]
    everyone = [side.sender, *side.senders, *side.receivers, *side.idlers]
    t0 = time.perf_counter()
    reg = await register_users(base, everyone, 10)
    if reg.failed:
        raise RuntimeError(f"{side.label}: {reg.failed} registrations failed: {reg.errors[:3]}")
    async with _session(limit=10) as session:
        for name in ("seq", "conc", "fanout", "lobby"):
            side.rooms[name] = await create_room(session, base, side.sender, name=f"bench {name}")
        joins = ([(a, side.rooms["conc"]) for a in side.senders]
                 + [(a, side.rooms["fanout"]) for a in side.receivers]
                 + [(a, side.rooms["lobby"]) for a in side.idlers])

        async def op(s: aiohttp.ClientSession, i: int) -> None:
            await join_room(s, base, joins[i][0], joins[i][1])

        res = await run_phase("join", len(joins), 5, op)
        if res.failed:
            raise RuntimeError(f"{side.label}: {res.failed} joins failed: {res.errors[:3]}")
    print(f"{side.label}: set up {len(everyone)} users, 4 rooms, {len(joins)} joins in "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)


# --------------------------------------------------------------------------- seq / conc


def _content(tag: str, text: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": text, "bench_tag": tag}


async def _send(side: Side, session: aiohttp.ClientSession, acct: Account, room: str, txn: str,
                content: dict[str, Any]) -> None:
    """The send request; the floor answers ``{}``, so only a homeserver's event_id is checked."""
    assert side.server is not None
    if side.is_floor:
        await matrix_call(session, "PUT", send_url(side.server.base_url, room, txn), acct.access_token, content)
    else:
        await send_message(session, side.server.base_url, acct, room, txn, content)


async def phase_seq(side: Side, args: argparse.Namespace, tag: str, count: int | None = None) -> SendPhase:
    server = side.server
    assert server is not None
    room, acct = side.rooms.get("seq", "!floor:x"), side.sender or Account("floor", "", access_token="x")
    run = secrets.token_hex(3)
    n = args.messages if count is None else count

    async def op(session: aiohttp.ClientSession, i: int) -> None:
        await _send(side, session, acct, room, f"seq{run}-{i}", _content(tag, f"seq {i}"))

    meter = CpuMeter(server, args.db == "postgres" and not side.is_floor)
    meter.start()
    phase = await run_phase("seq", n, 1, op)
    return SendPhase(phase, *meter.stop())


async def phase_conc(side: Side, args: argparse.Namespace, tag: str, per_sender: int | None = None) -> SendPhase:
    server = side.server
    assert server is not None
    room = side.rooms.get("conc", "!floor:x")
    senders = side.senders or [Account(f"floor{i}", "", access_token="x") for i in range(args.senders)]
    run = secrets.token_hex(3)
    m = args.per_sender if per_sender is None else per_sender

    async def op(session: aiohttp.ClientSession, w: int, j: int) -> None:
        await _send(side, session, senders[w], room, f"conc{run}-{w}-{j}", _content(tag, f"conc {w} {j}"))

    meter = CpuMeter(server, args.db == "postgres" and not side.is_floor)
    meter.start()
    phase = await run_workers("conc", len(senders), m, op)
    return SendPhase(phase, *meter.stop())


# --------------------------------------------------------------------------- fan-out


class Deliveries:
    """What the receivers got: every (receiver, sequence number) once, with its arrival time."""

    def __init__(self, run: str, receivers: int, result: Fanout) -> None:
        self.run = run
        self.n = receivers
        self.result = result
        self.got: list[dict[int, float]] = [{} for _ in range(receivers)]
        self.counts: dict[int, int] = {}
        self.complete: dict[int, asyncio.Event] = {}
        self.stopped = [False] * receivers
        self.ready = 0
        self.all_ready = asyncio.Event()
        self.counting = False

    def event(self, k: int) -> asyncio.Event:
        return self.complete.setdefault(k, asyncio.Event())

    def mark_ready(self) -> None:
        self.ready += 1
        if self.ready == self.n:
            self.all_ready.set()

    def take(self, r: int, body: dict[str, Any], t: float) -> None:
        """Record the bench messages of this run found in a sync body."""
        if self.counting:
            self.result.syncs += 1
        for room in (body.get("rooms") or {}).get("join", {}).values():
            for ev in (room.get("timeline") or {}).get("events", []):
                content = ev.get("content") or {}
                if content.get("bench_run") != self.run:
                    continue
                k = int(content["bench_k"])
                if k == STOP:
                    self.stopped[r] = True
                if k in self.got[r]:
                    self.result.duplicates += 1
                    continue
                self.got[r][k] = t
                self.counts[k] = self.counts.get(k, 0) + 1
                if self.counts[k] == self.n:
                    self.event(k).set()


async def _sync_receiver(session: aiohttp.ClientSession, base: str, acct: Account, r: int, d: Deliveries,
                         tokens: dict[str, str]) -> None:
    """A /sync long-poll client: initial sync (unless it has a token from an earlier round),
    then re-issue with next_batch at once, until STOP."""
    url = base + SYNC_PATH
    headers = {"Authorization": f"Bearer {acct.access_token}"}
    params = {"filter": SYNC_FILTER, "timeout": "0"}
    first = True
    if acct.username in tokens:
        params = {"filter": SYNC_FILTER, "timeout": str(FANOUT_LONGPOLL_MS), "since": tokens[acct.username]}
        first = False
        d.mark_ready()
    failures = 0
    while not d.stopped[r]:
        try:
            async with session.get(url, params=params, headers=headers) as resp:
                raw = await resp.read()
                t = time.perf_counter()
            if resp.status != 200:
                raise RequestFailed(f"HTTP {resp.status} {raw[:200]!r}")
            body = json.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, RequestFailed, ValueError) as e:
            d.result.error(f"receiver {r} sync: {type(e).__name__}: {e}")
            failures += 1
            if failures > 5:
                return
            await asyncio.sleep(0.5)
            continue
        if first:
            first = False
            d.mark_ready()
        else:
            d.take(r, body, t)
        tokens[acct.username] = body["next_batch"]
        params = {"filter": SYNC_FILTER, "timeout": str(FANOUT_LONGPOLL_MS), "since": body["next_batch"]}


async def _sse_receiver(session: aiohttp.ClientSession, base: str, acct: Account, r: int, d: Deliveries,
                        tokens: dict[str, str]) -> None:
    """An EventSource-like client of Whispr's SSE stream; closes the stream after STOP."""
    params = {"access_token": acct.access_token, "filter": SYNC_FILTER}
    try:
        async with session.get(base + SSE_PATH, params=params) as resp:
            if resp.status != 200:
                raise RequestFailed(f"HTTP {resp.status} {(await resp.read())[:200]!r}")
            ctype = resp.headers.get("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                raise RequestFailed(f"Content-Type {ctype!r}")
            first = True
            event, event_id, data = "message", "", []
            while not d.stopped[r]:
                line = await resp.content.readline()
                if not line:
                    raise RequestFailed("stream ended")
                line = line.rstrip(b"\n").rstrip(b"\r")
                if line.startswith(b":"):
                    continue  # heartbeat comment
                if line:
                    name, _, value = line.decode().partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "id":
                        event_id = value
                    elif name == "data":
                        data.append(value)
                    continue
                # A blank line dispatches the event.
                t = time.perf_counter()
                if data:
                    if event != "sync":
                        d.result.error(f"receiver {r}: unexpected event {event!r}")
                    body = json.loads("\n".join(data))
                    if body.get("next_batch") != event_id:
                        d.result.error(f"receiver {r}: id {event_id!r} != next_batch {body.get('next_batch')!r}")
                    if first:
                        first = False
                        d.mark_ready()
                    else:
                        d.take(r, body, t)
                event, event_id, data = "message", "", []
    except (aiohttp.ClientError, asyncio.TimeoutError, RequestFailed, ValueError) as e:
        d.result.error(f"receiver {r} SSE: {type(e).__name__}: {e}")


async def phase_fanout(side: Side, args: argparse.Namespace, mode: str) -> Fanout:
    """Closed loop: message k+1 is sent once every receiver has message k (or after a timeout)."""
    server = side.server
    assert server is not None and side.sender is not None
    base, room = server.base_url, side.rooms["fanout"]
    n, m = len(side.receivers), args.fanout_messages
    result = Fanout(mode, n, m, expected=n * m)
    run = secrets.token_hex(4)
    d = Deliveries(run, n, result)
    sent_at: dict[int, float] = {}
    receiver = _sync_receiver if mode == "sync" else _sse_receiver
    meter = CpuMeter(server, args.db == "postgres")

    async with _session(limit=0, read_timeout=None if mode == "sse" else 90.0) as rx, _session(limit=1) as tx:
        tasks = [asyncio.create_task(receiver(rx, base, a, r, d, side.tokens))
                 for r, a in enumerate(side.receivers)]

        async def send(k: int) -> bool:
            sent_at[k] = time.perf_counter()
            content = {"msgtype": "m.text", "body": f"fan-out {k}", "bench_run": run, "bench_k": k}
            try:
                await send_message(tx, base, side.sender, room, f"fan{run}-{k}", content)
            except (RequestFailed, aiohttp.ClientError, asyncio.TimeoutError) as e:
                result.error(f"send {k}: {type(e).__name__}: {e}")
                return False
            if k >= 0:
                result.send_latencies_s.append(time.perf_counter() - sent_at[k])
            return True

        async def deliver(k: int, timeout: float) -> bool:
            if not await send(k):
                return False
            try:
                await asyncio.wait_for(d.event(k).wait(), timeout)
                return True
            except asyncio.TimeoutError:
                return False

        try:
            try:
                await asyncio.wait_for(d.all_ready.wait(), 60)
            except asyncio.TimeoutError:
                result.error(f"only {d.ready}/{n} receivers finished their initial sync")
            await asyncio.sleep(0.2)  # let the first long-polls reach the server
            for k in range(-2, 0):  # uncounted warm-up messages through the same loop
                if not await deliver(k, args.delivery_timeout):
                    result.error(f"warm-up message {k}: {d.counts.get(k, 0)}/{n} receivers got it")
            d.counting = True
            meter.start()
            t0 = time.perf_counter()
            for k in range(m):
                await deliver(k, args.delivery_timeout)
            result.wall_s = time.perf_counter() - t0
            result.cpu_s, result.db_cpu_s, result.client_cpu_s = meter.stop()
            d.counting = False
            await send(STOP)
            _, pending = await asyncio.wait(tasks, timeout=args.delivery_timeout)
            if pending:
                result.error(f"{len(pending)} receivers did not get the stop message")
            if mode == "sse":
                # The server's SSE loops are waiting for news of the room again: one more message
                # makes them write to the closed connections and end.
                await asyncio.sleep(0.3)
                await send_message(tx, base, side.sender, room, f"fan{run}-flush", _content("flush", "flush"))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    for r in range(n):
        for k in range(m):
            t = d.got[r].get(k)
            if t is None:
                if len(result.missing) < MAX_ERRORS:
                    result.missing.append(f"receiver {r}: message {k}")
            else:
                result.delivered += 1
                result.latencies_s.append(t - sent_at[k])
    return result


# --------------------------------------------------------------------------- memory


async def settle(server: RunningServer, quiet_cpu_s: float = 0.01, window_s: float = 0.5,
                 max_s: float = 15.0) -> None:
    """Wait until the server used less than ``quiet_cpu_s`` CPU over ``window_s`` (or ``max_s``)."""
    deadline = time.monotonic() + max_s
    last = server.cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(window_s)
        now = server.cpu_seconds()
        if now - last < quiet_cpu_s:
            return
        last = now


async def phase_memory(side: Side, args: argparse.Namespace) -> Memory:
    """RSS before and after --waiting-clients long-polls are opened (after their initial sync,
    or, in later rounds, going on from the token of the previous round's last answer).

    The clients are members of one room; a message there ends every long-poll at the end,
    which also checks that each one was really waiting on the server.
    """
    server = side.server
    assert server is not None and side.sender is not None
    base, room = server.base_url, side.rooms["lobby"]
    clients = side.idlers
    result = Memory(len(clients))
    run = secrets.token_hex(4)
    url = base + SYNC_PATH
    since: list[str] = [side.tokens.get(a.username, "") for a in clients]
    woken_at: list[float] = []

    async with _session(limit=0, read_timeout=MEMORY_LONGPOLL_MS / 1000 + 30) as session:
        async def initial(s: aiohttp.ClientSession, i: int) -> None:
            data = await matrix_call(s, "GET", url, clients[i].access_token,
                                     params={"filter": SYNC_FILTER, "timeout": "0"}, what="initial sync")
            since[i] = str(data["next_batch"])

        todo = [i for i in range(len(clients)) if not since[i]]  # the first round only
        if todo:
            res = await run_phase("initial sync", len(todo), 10, lambda s, j: initial(s, todo[j]))
            result.errors += res.errors

        async def wait_one(i: int) -> None:
            headers = {"Authorization": f"Bearer {clients[i].access_token}"}
            token = since[i]
            while True:
                params = {"filter": SYNC_FILTER, "timeout": str(MEMORY_LONGPOLL_MS), "since": token}
                async with session.get(url, params=params, headers=headers) as resp:
                    raw = await resp.read()
                if resp.status != 200:
                    raise RequestFailed(f"HTTP {resp.status} {raw[:200]!r}")
                body = json.loads(raw)
                token = side.tokens[clients[i].username] = body["next_batch"]
                for r in (body.get("rooms") or {}).get("join", {}).values():
                    for ev in (r.get("timeline") or {}).get("events", []):
                        if (ev.get("content") or {}).get("bench_run") == run:
                            woken_at.append(time.perf_counter())
                            return
                # Answered without the wake-up: re-issue at once, like a client, and note what came.
                result.early_returns += 1
                if len(result.early_samples) < 3:
                    result.early_samples.append(_sections(body))
                if not result.early_body:
                    result.early_body = json.dumps(body)[:2000]

        await settle(server)
        result.rss_before_kb = server.rss_kb()
        tasks = [asyncio.create_task(wait_one(i)) for i in range(len(clients)) if since[i]]
        await asyncio.sleep(1.0)
        await settle(server)
        result.rss_after_kb = server.rss_kb()
        result.opened = sum(1 for t in tasks if not t.done())
        t0 = time.perf_counter()
        try:
            await send_message(session, base, side.sender, room, f"mem{run}", {
                "msgtype": "m.text", "body": "wake up", "bench_run": run})
        except (RequestFailed, aiohttp.ClientError) as e:
            result.errors.append(f"wake-up send: {e}")
        done, pending = await asyncio.wait(tasks, timeout=args.delivery_timeout) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            if t.exception() is not None:
                result.errors.append(f"long-poll: {type(t.exception()).__name__}: {t.exception()}")
        result.woken = len(woken_at)
        if woken_at and result.woken == len(clients):
            result.wake_all_s = max(woken_at) - t0
    return result


def _sections(body: dict[str, Any]) -> str:
    """The non-empty parts of a sync response, e.g. 'rooms.join(1) device_lists.changed(3)'."""
    parts = []
    for key, value in body.items():
        if key == "next_batch" or not value:
            continue
        if isinstance(value, dict):
            for sub, inner in value.items():
                if inner:
                    parts.append(f"{key}.{sub}({len(inner) if isinstance(inner, (list, dict)) else inner})")
        else:
            parts.append(key)
    return " ".join(parts) or "empty"


# --------------------------------------------------------------------------- driver


async def warm_up(side: Side, args: argparse.Namespace, tag: str) -> None:
    if args.warmup <= 0:
        return
    seq = await phase_seq(side, args, tag + "w", count=args.warmup)
    conc = await phase_conc(side, args, tag + "w", per_sender=max(1, args.warmup // max(1, args.senders)))
    for p in (seq.phase, conc.phase):
        side.failures += [f"warm-up: {e}" for e in p.errors]


async def run_all(sides: list[Side], args: argparse.Namespace) -> None:
    tag = secrets.token_hex(2)
    for side in sides:
        if not side.is_floor:
            await setup_side(side, args, tag)
    for side in sides:
        await warm_up(side, args, tag)
    for round_no in range(args.rounds):
        homeservers = [s for s in sides if not s.is_floor]
        order = (homeservers if round_no % 2 == 0 else homeservers[::-1]) + [s for s in sides if s.is_floor]
        rounds = {s.label: Round(round_no) for s in sides}
        for s in sides:
            s.rounds.append(rounds[s.label])
        phases: list[tuple[str, Callable[[Side], Any]]] = [
            ("memory", lambda s: phase_memory(s, args)),
            ("seq", lambda s: phase_seq(s, args, tag)),
            ("conc", lambda s: phase_conc(s, args, tag)),
            ("fanout", lambda s: phase_fanout(s, args, "sync")),
            ("sse", lambda s: phase_fanout(s, args, "sse")),
        ]
        for name, fn in phases:
            if name not in args.phases:
                continue
            for side in order:
                if side.is_floor and name not in ("seq", "conc"):
                    continue
                if name == "sse" and side.label != "Whispr":
                    continue
                t0 = time.perf_counter()
                spy = _start_profiler(side, args, f"{name}-r{round_no}")
                try:
                    result = await fn(side)
                finally:
                    _stop_profiler(spy)
                setattr(rounds[side.label], name, result)
                print(f"round {round_no} {side.label:8s} {name:7s} {_progress(result)} "
                      f"({time.perf_counter() - t0:.1f}s)", file=sys.stderr)


def _start_profiler(side: Side, args: argparse.Namespace, what: str) -> subprocess.Popen[bytes] | None:
    """With --profile DIR: py-spy record the server during one phase (collapsed stacks)."""
    if args.profile is None or side.label.lower() not in args.profile_servers or side.server is None:
        return None
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / f"{side.label.lower()}-{what}.txt"
    mode = ["--native", "--threads"] if args.profile_native else ["--nonblocking"]
    proc = subprocess.Popen([exe, "record", "--pid", str(side.server.pid), "--rate", "250", "--format", "raw",
                             "--output", str(out), *mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attach before the load starts
    return proc


def _stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _progress(r: Any) -> str:
    if isinstance(r, SendPhase):
        return (f"{r.phase.throughput:8.1f} msg/s  p50 {1000 * r.phase.percentile(50):6.1f} ms  "
                f"p99 {1000 * r.phase.percentile(99):6.1f} ms  CPU {r.cpu_ms_per_op():.2f} ms/msg  "
                f"failed {r.phase.failed}")
    if isinstance(r, Fanout):
        return (f"{r.delivered}/{r.expected} delivered  p50 {1000 * r.percentile(50):6.1f} ms  "
                f"p99 {1000 * r.percentile(99):6.1f} ms  dup {r.duplicates}  errors {len(r.errors)}")
    if isinstance(r, Memory):
        return (f"RSS {r.rss_before_kb} -> {r.rss_after_kb} KiB  {r.kb_per_client:.1f} KiB/client  "
                f"open {r.opened}/{r.clients}  woken {r.woken}")
    return str(r)


# --------------------------------------------------------------------------- report

NAN = float("nan")


def _med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else NAN


def _rounds(side: Side | None, attr: str) -> list[Any]:
    if side is None:
        return []
    return [getattr(r, attr) for r in side.rounds if getattr(r, attr) is not None]


def _send_metric(side: Side | None, attr: str, fn: Callable[[SendPhase], float]) -> float:
    return _med([fn(p) for p in _rounds(side, attr)])


def _pooled(side: Side | None, attr: str, q: float) -> float:
    lat: list[float] = []
    for p in _rounds(side, attr):
        lat += p.phase.latencies_s if isinstance(p, SendPhase) else p.latencies_s
    return 1000 * _percentile(lat, q)


def _fan_total(side: Side | None, attr: str) -> tuple[int, int]:
    fans = _rounds(side, attr)
    return sum(f.delivered for f in fans), sum(f.expected for f in fans)


def _fmt(x: float, digits: int = 1) -> str:
    if x != x:
        return "–"
    return f"{x:,.{digits}f}" if abs(x) < 1000 else f"{x:,.0f}"


def _ratio(w: float, s: float, higher_better: bool) -> float:
    if w != w or s != s:
        return NAN
    num, den = (w, s) if higher_better else (s, w)
    return num / den if den else NAN


@dataclass
class Row:
    name: str
    whispr: float
    synapse: float
    higher_better: bool | None  # None: no ratio
    unit_digits: int = 1
    synapse_note: str = ""

    @property
    def ratio(self) -> float:
        return NAN if self.higher_better is None else _ratio(self.whispr, self.synapse, self.higher_better)


def build_rows(w: Side | None, s: Side | None, args: argparse.Namespace) -> list[Row]:
    pg = args.db == "postgres"
    rows = [
        Row("sequential: messages/s ↑", _send_metric(w, "seq", lambda p: p.phase.throughput),
            _send_metric(s, "seq", lambda p: p.phase.throughput), True),
        Row("sequential: send latency p50, ms ↓", _pooled(w, "seq", 50), _pooled(s, "seq", 50), False, 2),
        Row("sequential: send latency p99, ms ↓", _pooled(w, "seq", 99), _pooled(s, "seq", 99), False, 2),
        Row("sequential: server CPU per message, ms ↓", _send_metric(w, "seq", lambda p: p.cpu_ms_per_op()),
            _send_metric(s, "seq", lambda p: p.cpu_ms_per_op()), False, 2),
    ]
    if pg:
        rows.append(Row("sequential: server + PostgreSQL CPU per message, ms ↓",
                        _send_metric(w, "seq", lambda p: p.cpu_ms_per_op(True)),
                        _send_metric(s, "seq", lambda p: p.cpu_ms_per_op(True)), False, 2))
    rows += [
        Row(f"concurrent ({args.senders} senders): messages/s ↑", _send_metric(w, "conc", lambda p: p.phase.throughput),
            _send_metric(s, "conc", lambda p: p.phase.throughput), True),
        Row("concurrent: send latency p50, ms ↓", _pooled(w, "conc", 50), _pooled(s, "conc", 50), False, 2),
        Row("concurrent: send latency p99, ms ↓", _pooled(w, "conc", 99), _pooled(s, "conc", 99), False, 2),
        Row("concurrent: server CPU per message, ms ↓", _send_metric(w, "conc", lambda p: p.cpu_ms_per_op()),
            _send_metric(s, "conc", lambda p: p.cpu_ms_per_op()), False, 2),
    ]
    if pg:
        rows.append(Row("concurrent: server + PostgreSQL CPU per message, ms ↓",
                        _send_metric(w, "conc", lambda p: p.cpu_ms_per_op(True)),
                        _send_metric(s, "conc", lambda p: p.cpu_ms_per_op(True)), False, 2))

    def fan_cpu(f: Fanout) -> float:
        return 1000 * f.cpu_s / f.messages if f.messages else NAN

    wd, we = _fan_total(w, "fanout")
    sd, se = _fan_total(s, "fanout")
    xd, xe = _fan_total(w, "sse")
    rows += [
        Row(f"fan-out /sync ({args.receivers} receivers): delivery p50, ms ↓", _pooled(w, "fanout", 50),
            _pooled(s, "fanout", 50), False),
        Row("fan-out /sync: delivery p99, ms ↓", _pooled(w, "fanout", 99), _pooled(s, "fanout", 99), False),
        Row("fan-out /sync: deliveries arrived", wd, sd, None, 0),
        Row("fan-out /sync: server CPU per message (all receivers), ms ↓",
            _med([fan_cpu(f) for f in _rounds(w, "fanout")]), _med([fan_cpu(f) for f in _rounds(s, "fanout")]),
            False),
        Row("fan-out SSE: delivery p50, ms ↓ (Synapse: its /sync long-poll)", _pooled(w, "sse", 50),
            _pooled(s, "fanout", 50), False, synapse_note=" (long-poll)"),
        Row("fan-out SSE: delivery p99, ms ↓ (Synapse: its /sync long-poll)", _pooled(w, "sse", 99),
            _pooled(s, "fanout", 99), False, synapse_note=" (long-poll)"),
        Row("fan-out SSE: deliveries arrived", xd, NAN, None, 0),
        Row("fan-out SSE: server CPU per message (all receivers), ms ↓",
            _med([fan_cpu(f) for f in _rounds(w, "sse")]), _med([fan_cpu(f) for f in _rounds(s, "fanout")]),
            False, synapse_note=" (long-poll)"),
        Row("idle RSS, fresh after start, MiB ↓", (w.rss_fresh_kb / 1024) if w else NAN,
            (s.rss_fresh_kb / 1024) if s else NAN, False),
        Row("idle RSS after all phases, MiB ↓", (w.rss_end_kb / 1024) if w else NAN,
            (s.rss_end_kb / 1024) if s else NAN, False),
        Row(f"RSS with {args.waiting_clients} long-polls waiting, MiB ↓",
            _med([m.rss_after_kb / 1024 for m in _rounds(w, "memory")]),
            _med([m.rss_after_kb / 1024 for m in _rounds(s, "memory")]), False),
        Row("memory per waiting /sync client (first round), KiB ↓",
            next((m.kb_per_client for m in _rounds(w, "memory")), NAN),
            next((m.kb_per_client for m in _rounds(s, "memory")), NAN), False),
        Row(f"wake all {args.waiting_clients} waiting clients (one message), ms ↓",
            _med([1000 * m.wake_all_s for m in _rounds(w, "memory")]),
            _med([1000 * m.wake_all_s for m in _rounds(s, "memory")]), False),
    ]
    return rows


def _cell(v: float, digits: int, note: str = "") -> str:
    return _fmt(v, digits) + (note if v == v else "")


def _targets(rows: list[Row], w: Side | None, s: Side | None,
             args: argparse.Namespace) -> list[tuple[str, str, bool | None]]:
    by = {r.name: r for r in rows}

    def ratio(prefix: str) -> float:
        return next(r.ratio for name, r in by.items() if name.startswith(prefix))

    wd, we = _fan_total(w, "fanout")
    xd, xe = _fan_total(w, "sse")
    sd, se = _fan_total(s, "fanout")
    out: list[tuple[str, str, bool | None]] = []

    def check(name: str, value: float, goal: float, extra_ok: bool = True, detail: str = "") -> None:
        met = None if value != value else (value >= goal and extra_ok)
        out.append((name, f"{_fmt(value, 2)}× (goal ≥ {goal:g}×){detail}", met))

    check("messages/s sequential ≥ 10× Synapse", ratio("sequential: messages/s"), 10)
    check("messages/s concurrent ≥ 10× Synapse", ratio("concurrent ("), 10)
    check("server CPU per message (sequential) ≤ 1/10 Synapse", ratio("sequential: server CPU"), 10)
    check("server CPU per message (concurrent) ≤ 1/10 Synapse", ratio("concurrent: server CPU"), 10)
    check("fan-out /sync p99 ≤ 1/10 Synapse, every delivery", ratio("fan-out /sync: delivery p99"), 10,
          wd == we and we > 0, f"; Whispr {wd}/{we}, Synapse {sd}/{se} delivered")
    check("fan-out SSE p99 ≤ 1/10 Synapse's /sync p99, every delivery", ratio("fan-out SSE: delivery p99"), 10,
          xd == xe and xe > 0, f"; Whispr SSE {xd}/{xe} delivered")
    check("idle RSS (fresh) ≤ 1/2 Synapse", ratio("idle RSS, fresh"), 2)
    check("idle RSS (after the phases) ≤ 1/2 Synapse", ratio("idle RSS after"), 2)
    check("KiB per waiting client ≤ Synapse", ratio("memory per waiting"), 1)
    return out


def cpu_times() -> list[int]:
    """The machine's aggregate CPU counters from /proc/stat (user nice system idle iowait irq softirq steal)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def steal_percent(before: list[int], after: list[int]) -> float:
    """Share of CPU time the hypervisor gave to others between two cpu_times() (a noisy-VM sign)."""
    delta = [b - a for a, b in zip(before, after)]
    return 100 * delta[7] / sum(delta) if sum(delta) else NAN


def whispr_revision() -> str:
    """The commit Whispr ran from, with '+changes' when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"],
                               cwd=Path(__file__).parent.parent, text=True, capture_output=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(sides: list[Side], args: argparse.Namespace, load_before: tuple[float, ...]) -> str:
    by = {s.label: s for s in sides}
    w, s, f = by.get("Whispr"), by.get("Synapse"), by.get("floor")
    rows = build_rows(w, s, args)
    lines = [
        f"## Rooms benchmark: database {args.db}, {args.rounds} round(s)"
        f"{' (--quick)' if args.quick else ''}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, {os.cpu_count()} CPUs, load average before "
        f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"CPU steal {args.steal_percent:.1f}%; Whispr {args.revision}; Synapse {SYNAPSE_VERSION}; client, "
        f"servers{' and PostgreSQL' if args.db == 'postgres' else ''} share the machine.",
        "",
        f"Sizes: sequential {args.messages} messages; concurrent {args.senders} senders × {args.per_sender}; "
        f"fan-out {args.receivers} receivers × {args.fanout_messages} messages (closed loop: message k+1 is "
        f"sent when every receiver has k); {args.waiting_clients} waiting clients. Filter on every sync: "
        f"`{SYNC_FILTER}`.",
        "",
        "| metric | Whispr | Synapse | ratio (>1 = Whispr better) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.higher_better is None:
            if "SSE" in r.name:
                total = _fan_total(w, "sse")
                lines.append(f"| {r.name} | {total[0]}/{total[1]} | no SSE | |")
            else:
                wt, st = _fan_total(w, "fanout"), _fan_total(s, "fanout")
                lines.append(f"| {r.name} | {wt[0]}/{wt[1]} | {st[0]}/{st[1]} | |")
            continue
        how = "W/S" if r.higher_better else "S/W"
        ratio = "–" if r.ratio != r.ratio else f"{r.ratio:.2f}× ({how})"
        lines.append(f"| {r.name} | {_cell(r.whispr, r.unit_digits)} "
                     f"| {_cell(r.synapse, r.unit_digits, r.synapse_note)} | {ratio} |")
    lines += ["", "↑ higher is better, ↓ lower is better. The ratio is Whispr ÷ Synapse for ↑ rows and "
              "Synapse ÷ Whispr for ↓ rows, so above 1 always means Whispr is better. Throughput, CPU and "
              "memory are medians over rounds, except memory per waiting client: the first round's, since later "
              "rounds reuse memory the first one freed (see the per-round table); latency percentiles pool "
              "every round. Server CPU is the "
              "homeserver process from /proc"
              + (" (PostgreSQL's processes in the extra rows)." if args.db == "postgres" else
                 " (SQLite work included).")]

    if f is not None and f.rounds:
        def fl(attr: str, fn: Callable[[SendPhase], float], side: Side | None) -> float:
            return _send_metric(side, attr, fn)

        thr = lambda p: p.phase.throughput  # noqa: E731
        cpu = lambda p: p.cpu_ms_per_op()  # noqa: E731
        ccpu = lambda p: 1000 * p.client_cpu_s / p.phase.ok if p.phase.ok else NAN  # noqa: E731
        lines += ["", "### The floor: an empty aiohttp handler (uvloop, returns `{}`) under the same loads", "",
                  f"| | sequential (1 client) | concurrent ({args.senders} clients) |", "| --- | ---: | ---: |",
                  f"| empty handler, requests/s | {_fmt(fl('seq', thr, f))} | {_fmt(fl('conc', thr, f))} |",
                  f"| Whispr send, messages/s | {_fmt(fl('seq', thr, w))} | {_fmt(fl('conc', thr, w))} |",
                  f"| Whispr ÷ floor | {_fmt(_ratio(fl('seq', thr, w), fl('seq', thr, f), True), 2)} "
                  f"| {_fmt(_ratio(fl('conc', thr, w), fl('conc', thr, f), True), 2)} |",
                  f"| Synapse ÷ floor | {_fmt(_ratio(fl('seq', thr, s), fl('seq', thr, f), True), 3)} "
                  f"| {_fmt(_ratio(fl('conc', thr, s), fl('conc', thr, f), True), 3)} |",
                  f"| empty handler: server CPU per request, ms | {_fmt(fl('seq', cpu, f), 3)} "
                  f"| {_fmt(fl('conc', cpu, f), 3)} |",
                  f"| Whispr: server CPU per message, ms | {_fmt(fl('seq', cpu, w), 3)} "
                  f"| {_fmt(fl('conc', cpu, w), 3)} |",
                  f"| load client CPU per request (floor), ms | {_fmt(fl('seq', ccpu, f), 3)} "
                  f"| {_fmt(fl('conc', ccpu, f), 3)} |",
                  f"| load client CPU per message (Whispr), ms | {_fmt(fl('seq', ccpu, w), 3)} "
                  f"| {_fmt(fl('conc', ccpu, w), 3)} |",
                  f"| floor RSS fresh, MiB | {_fmt(f.rss_fresh_kb / 1024)} | |"]

    notes = []
    for side in sides:
        for r in side.rounds:
            if r.memory is not None and r.memory.early_returns:
                notes.append(f"- {side.label} round {r.round}: {r.memory.early_returns} of the waiting long-polls "
                             f"returned before the wake-up message and were re-issued; they carried: "
                             f"{'; '.join(r.memory.early_samples)}")
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", "### Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for name, measured, met in _targets(rows, w, s, args):
        lines.append(f"| {name} | {measured} | {'–' if met is None else ('met' if met else 'NOT met')} |")

    lines += ["", "### Per round", "",
              "| round | server | seq msg/s | seq CPU ms/msg | conc msg/s | conc CPU ms/msg | fan-out p99 ms "
              "| SSE p99 ms | KiB/waiting client | failed |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for round_no in range(args.rounds):
        for side in sides:
            for r in side.rounds:
                if r.round != round_no:
                    continue

                def g(p: SendPhase | None, fn: Callable[[SendPhase], float]) -> str:
                    return _fmt(fn(p), 2) if p else "–"

                failed = sum(p.phase.failed for p in (r.seq, r.conc) if p)
                failed += sum(x.expected - x.delivered + len(x.errors) for x in (r.fanout, r.sse) if x)
                failed += (r.memory.clients - r.memory.woken) if r.memory else 0
                lines.append(
                    f"| {round_no} | {side.label} | {g(r.seq, lambda p: p.phase.throughput)} "
                    f"| {g(r.seq, lambda p: p.cpu_ms_per_op())} | {g(r.conc, lambda p: p.phase.throughput)} "
                    f"| {g(r.conc, lambda p: p.cpu_ms_per_op())} "
                    f"| {_fmt(1000 * r.fanout.percentile(99)) if r.fanout else '–'} "
                    f"| {_fmt(1000 * r.sse.percentile(99)) if r.sse else '–'} "
                    f"| {_fmt(r.memory.kb_per_client) if r.memory else '–'} | {failed} |")
    return "\n".join(lines)


def problems(sides: list[Side]) -> list[str]:
    """Every failure, missing delivery or anomaly, labelled; empty when the run was clean."""
    out: list[str] = []
    for side in sides:
        out += [f"{side.label}: {m}" for m in side.failures]
        for r in side.rounds:
            for p in (r.seq, r.conc):
                if p is not None and p.phase.failed:
                    out.append(f"{side.label} round {r.round} {p.phase.name}: {p.phase.failed} failed: "
                               f"{p.phase.errors[:3]}")
            for x in (r.fanout, r.sse):
                if x is None:
                    continue
                if x.delivered != x.expected:
                    out.append(f"{side.label} round {r.round} fan-out {x.mode}: {x.delivered}/{x.expected} "
                               f"delivered; missing e.g. {x.missing[:5]}")
                if x.duplicates:
                    out.append(f"{side.label} round {r.round} fan-out {x.mode}: {x.duplicates} duplicate deliveries")
                out += [f"{side.label} round {r.round} fan-out {x.mode}: {e}" for e in x.errors]
            if r.memory is not None:
                m = r.memory
                if m.woken != m.clients:
                    out.append(f"{side.label} round {r.round} memory: {m.woken}/{m.clients} waiting clients "
                               f"got the wake-up message")
                if m.opened != m.clients:
                    out.append(f"{side.label} round {r.round} memory: {m.opened}/{m.clients} long-polls open "
                               f"when RSS was read")
                out += [f"{side.label} round {r.round} memory: {e}" for e in m.errors]
    return out


def raw_results(sides: list[Side], args: argparse.Namespace, text: str) -> dict[str, Any]:
    return {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "filter": SYNC_FILTER, "report": text, "problems": problems(sides),
            "sides": [{"label": s.label, "rss_fresh_kb": s.rss_fresh_kb, "rss_end_kb": s.rss_end_kb,
                       "failures": s.failures, "rounds": [asdict(r) for r in s.rounds]} for s in sides]}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_rooms", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute)")
    p.add_argument("--rounds", type=int, help="rounds, alternating the servers (2; --quick 1)")
    p.add_argument("--messages", type=int, help="sequential messages (500; --quick 50)")
    p.add_argument("--senders", type=int, help="concurrent senders (20; --quick 10)")
    p.add_argument("--per-sender", type=int, help="messages per concurrent sender (50; --quick 5)")
    p.add_argument("--receivers", type=int, help="fan-out receivers (50; --quick 10)")
    p.add_argument("--fanout-messages", type=int, help="fan-out messages (20; --quick 5)")
    p.add_argument("--waiting-clients", type=int, help="long-polls held open for memory (200; --quick 20)")
    p.add_argument("--warmup", type=int, help="uncounted messages per server first (20; --quick 5)")
    p.add_argument("--delivery-timeout", type=float, default=30.0,
                   help="seconds to wait for every receiver to get a message (30)")
    p.add_argument("--phases", default="memory,seq,conc,fanout,sse",
                   help="comma-separated subset of memory,seq,conc,fanout,sse")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default=None, help="admin URL for --db postgres (default $WHISPR_TEST_POSTGRES "
                                                  "or postgresql://postgres@127.0.0.1:5432/postgres)")
    p.add_argument("--only", choices=["whispr", "synapse"], help="run one homeserver only")
    p.add_argument("--no-floor", action="store_true", help="skip the empty-aiohttp floor")
    p.add_argument("--whispr-python", default=sys.executable, help="interpreter for Whispr (this one)")
    p.add_argument("--synapse-python", default=None,
                   help="interpreter with Synapse (default $WHISPR_SYNAPSE_PYTHON, else bench/.venv-synapse)")
    p.add_argument("--whispr-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for Whispr (repeatable), e.g. WHISPR_LOG_LEVEL=INFO")
    p.add_argument("--json", type=Path, help="also write raw results (all latencies) here")
    p.add_argument("--keep-data", action="store_true", help="keep temp dirs and databases for inspection")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy record each phase of the servers in --profile-servers into DIR "
                        "(collapsed stacks; the profiler's CPU skews that run's figures)")
    p.add_argument("--profile-native", action="store_true",
                   help="py-spy --native --threads (pauses the server at each sample: slower, but C time shows)")
    p.add_argument("--profile-servers", default="whispr", help="comma-separated: whispr,synapse (whispr)")
    args = p.parse_args(argv)
    args.profile_servers = [x.strip().lower() for x in args.profile_servers.split(",") if x.strip()]
    for key, value in SIZES["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = set(args.phases) - {"memory", "seq", "conc", "fanout", "sse"}
    if bad:
        p.error(f"unknown phases {sorted(bad)}")
    for key in ("rounds", "messages", "senders", "per_sender", "receivers", "fanout_messages", "waiting_clients"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def start_servers(args: argparse.Namespace) -> list[Side]:
    pg = PostgresAdmin(args.pg_url) if args.pg_url else PostgresAdmin()
    sides: list[Side] = []
    try:
        if args.only in (None, "whispr"):
            side = Side("Whispr")
            sides.append(side)
            env = dict(kv.split("=", 1) for kv in args.whispr_env)
            side.server = start_whispr(python=args.whispr_python, db=args.db, pg=pg, keep_data=args.keep_data,
                                       extra_config={"rate_limits": {"enabled": False}}, env=env)
        if args.only in (None, "synapse"):
            side = Side("Synapse")
            sides.append(side)
            python = args.synapse_python or synapse_python(need_postgres=args.db == "postgres")
            side.server = start_synapse(python=python, db=args.db, pg=pg, keep_data=args.keep_data)
        if not args.no_floor:
            side = Side("floor")
            sides.append(side)
            side.server = start_floor(python=args.whispr_python)
    except BaseException:
        stop_servers(sides)
        raise
    for side in sides:
        assert side.server is not None
        print(f"{side.label} up: {side.server.base_url} pid {side.server.pid} ({side.server.data_dir})",
              file=sys.stderr)
    return sides


def stop_servers(sides: list[Side]) -> None:
    for side in sides:
        if side.server is not None:
            side.server.stop()


async def measure_idle(sides: list[Side], attr: str) -> None:
    await asyncio.sleep(1.0)
    for side in sides:
        assert side.server is not None
        await settle(side.server, max_s=10.0)
        setattr(side, attr, side.server.rss_kb())


async def run_everything(sides: list[Side], args: argparse.Namespace) -> None:
    await measure_idle(sides, "rss_fresh_kb")
    await run_all(sides, args)
    await measure_idle(sides, "rss_end_kb")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    args.revision = whispr_revision()
    cpu_before = cpu_times()
    t0 = time.perf_counter()
    try:
        sides = start_servers(args)
    except (ServerStartError, RuntimeError, OSError) as e:
        print(f"error: could not start a server: {e}", file=sys.stderr)
        return 2
    try:
        try:
            asyncio.run(run_everything(sides, args))
        except (RuntimeError, RequestFailed) as e:  # setup failed (registration, rooms, joins)
            side = next((x for x in sides if str(e).startswith(x.label)), sides[0])
            side.fail(f"setup: {e}")
        for side in sides:
            assert side.server is not None
            if not side.server.alive():
                side.fail(f"server died during the run{side.server.log_tail(20)}")
    finally:
        stop_servers(sides)
    args.steal_percent = steal_percent(cpu_before, cpu_times())
    text = report(sides, args, load_before)
    print(text)
    found = problems(sides)
    print(f"\n(total time {time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw_results(sides, args, text), indent=1, default=str))
    if found:
        print(f"\n{len(found)} problem(s):", file=sys.stderr)
        for message in found[:30]:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
