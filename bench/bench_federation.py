"""Federation benchmark: Whispr-to-Whispr beside Synapse-to-Synapse, measured in the same run.

    python -m bench.bench_federation [--messages 100] [--burst 300] [--rounds 2]

For each pair (two processes on loopback, TLS federation, SQLite): one room on server A,
a user of server B joined; then
- delivery latency: A's user sends one message at a time; the time from the send request
  until B's user's long-poll /sync returns it (p50/p99);
- throughput: A's user sends `--burst` messages from 10 concurrent senders; events/s from
  the first send until B's /sync has all of them.
Every message must arrive, in order for the sequential phase. Rounds alternate pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import aiohttp

from bench.servers import RunningServer, free_port, start_synapse, start_whispr, synapse_python

V3 = "/_matrix/client/v3"
FILTER = json.dumps({"room": {"timeline": {"limit": 500}, "state": {"lazy_load_members": True}}})
_txn = itertools.count()


def start_pair(kind: str, tmp: Path) -> tuple[RunningServer, RunningServer]:
    from tests.synapse_peer import federation_listener, synapse_federation_config

    ports = free_port(), free_port()
    names = [f"127.0.0.1:{p}" for p in ports]
    servers = []
    for port, name in zip(ports, names):
        if kind == "whispr":
            servers.append(start_whispr(server_name=name, extra_config={"federation": {
                "enabled": True, "verify_tls": False, "allowed_private_ranges": ["127.0.0.0/8"]}}))
        else:
            servers.append(start_synapse(python=synapse_python(), server_name=name,
                                         extra_config=synapse_federation_config(tmp, port, names),
                                         extra_listeners=[federation_listener(port)]))
    return servers[0], servers[1]


class User:
    def __init__(self, s: aiohttp.ClientSession, server: RunningServer, user_id: str, token: str) -> None:
        self.s, self.server, self.user_id = s, server, user_id
        self.h = {"Authorization": f"Bearer {token}"}
        self.since = ""

    @classmethod
    async def register(cls, s: aiohttp.ClientSession, server: RunningServer, name: str) -> "User":
        url = server.base_url + V3 + "/register"
        body = {"username": name, "password": "bench password"}
        first = await (await s.post(url, json=body)).json()
        reg = await (await s.post(url, json={**body, "auth": {"type": "m.login.dummy",
                                                               "session": first["session"]}})).json()
        return cls(s, server, reg["user_id"], reg["access_token"])

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        async with self.s.request(method, self.server.base_url + V3 + path, headers=self.h, **kw) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {body}")
            return body

    async def sync(self, timeout: int = 30000) -> dict[str, Any]:
        params = {"timeout": str(timeout), "filter": FILTER}
        if self.since:
            params["since"] = self.since
        body = await self.call("GET", "/sync", params=params)
        self.since = body["next_batch"]
        return body

    async def send(self, room: str, text: str) -> None:
        await self.call("PUT", f"/rooms/{room}/send/m.room.message/b{next(_txn)}",
                        json={"msgtype": "m.text", "body": text})


def bodies(body: dict[str, Any], room: str, sender: str) -> list[str]:
    events = body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
    return [e["content"]["body"] for e in events if e["type"] == "m.room.message" and e["sender"] == sender]


async def wait_for(check: Callable[[], bool], timeout: float = 60, what: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out {what()}")
        await asyncio.sleep(0.01)


async def measure(a: RunningServer, b: RunningServer, messages: int, burst: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        alice, bob = await User.register(s, a, "alice"), await User.register(s, b, "bob")
        room = (await alice.call("POST", "/createRoom", json={"preset": "public_chat"}))["room_id"]
        await bob.call("POST", f"/join/{room}", params={"server_name": a.server_name})
        await bob.sync(0)
        await alice.send(room, "warm-up")
        received: list[tuple[str, float]] = []

        async def receiver(stop: asyncio.Event) -> None:
            while not stop.is_set():
                body = await bob.sync(5000)
                now = time.perf_counter()
                received.extend((text, now) for text in bodies(body, room, alice.user_id))

        stop = asyncio.Event()
        task = asyncio.create_task(receiver(stop))
        await wait_for(lambda: any(t == "warm-up" for t, _ in received))
        latencies = []
        for i in range(messages):
            start = time.perf_counter()
            await alice.send(room, f"seq{i}")
            await wait_for(lambda: any(t == f"seq{i}" for t, _ in received))  # noqa: B023 (awaited in this pass)
            latencies.append(next(ts for t, ts in received if t == f"seq{i}") - start)
        order = [t for t, _ in received if t.startswith("seq")]
        assert order == [f"seq{i}" for i in range(messages)], "out of order or duplicated"
        start = time.perf_counter()
        counter = itertools.count()

        async def sender() -> None:
            while (n := next(counter)) < burst:
                await alice.send(room, f"burst{n}")

        await asyncio.gather(*(sender() for _ in range(10)))
        # Counted from B's room history, not from /sync: a server may return a gappy (limited)
        # timeline when many events land between two syncs.
        have = 0
        deadline = time.monotonic() + 180
        while have < burst:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {have}/{burst} burst messages arrived")
            await asyncio.sleep(0.05)
            chunk = (await bob.call("GET", f"/rooms/{room}/messages",
                                    params={"dir": "b", "limit": str(burst + 50)}))["chunk"]
            have = len({e["content"].get("body") for e in chunk if e["type"] == "m.room.message"
                        and str(e["content"].get("body", "")).startswith("burst")})
        elapsed = time.perf_counter() - start
        stop.set()
        await alice.send(room, "stop")
        await task
        latencies.sort()
        return {"p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
                "events_per_s": burst / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--only", action="append", choices=["whispr", "synapse"])
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"whispr": [], "synapse": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for kind in args.only or ("whispr", "synapse"):
                with ExitStack() as stack:
                    a, b = start_pair(kind, Path(tmp))
                    stack.callback(b.stop)
                    stack.callback(a.stop)
                    results[kind].append(asyncio.run(measure(a, b, args.messages, args.burst)))
                    print(f"{kind}: {results[kind][-1]}", file=sys.stderr)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind]) if results[kind] else float("nan")

    print("| metric | Whispr→Whispr | Synapse→Synapse | ratio (higher = Whispr better) |")
    print("|---|---:|---:|---:|")
    for key, label, better_low in (("p50_ms", "delivery p50, ms", True), ("p99_ms", "delivery p99, ms", True),
                                   ("events_per_s", "throughput, events/s", False)):
        w, s = med("whispr", key), med("synapse", key)
        ratio = s / w if better_low else w / s
        print(f"| {label} | {w:.1f} | {s:.1f} | {ratio:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
