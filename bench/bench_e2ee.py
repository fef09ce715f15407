"""Encryption endpoints: a 100-device key share and keys/query, keys/claim for 50 users, Whispr against Synapse.

    python -m bench.bench_e2ee [--devices 100] [--users 50] [--requests 200] [--concurrency 10]
                               [--rounds 2] [--db sqlite|postgres] [--only whispr|synapse]

Both servers start once (fresh data, no rate limits); rounds alternate between them. Setup on each:
one recipient with --devices devices (logins), each past a first /sync; --users users, each with
signed device keys, 20 signed one-time keys and a fallback key. Each round, on each server:
  key share   with every device waiting in /sync (100 long-polls), one PUT /sendToDevice carrying
              a message (1 KiB, like an olm-encrypted m.room_key) to every device: the time from
              the send to the last device holding it;
  keys/query  --requests queries, each for all --users users, --concurrency in flight: requests/s;
  keys/claim  --requests claims, each of one key of every --users user: requests/s (the one-time
              keys run out after 20 rounds of claims; the fallback key answers after that).
Exit status: 0 all requests succeeded, 1 some failed, 2 a server did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from canonicaljson import encode_canonical_json
from nacl.signing import SigningKey

from bench.client import Account, register_users
from bench.raw_http import RawConnection
from bench.servers import PostgresAdmin, RunningServer, ServerStartError, start_synapse, start_whispr

V3 = "/_matrix/client/v3"
PASSWORD = "bench-password-1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _signed(obj: dict[str, Any], user_id: str, key_id: str, key: SigningKey) -> dict[str, Any]:
    sig = _b64(key.sign(encode_canonical_json(obj)).signature)
    return {**obj, "signatures": {user_id: {key_id: sig}}}


def key_upload(user_id: str, device_id: str) -> dict[str, Any]:
    key = SigningKey.generate()
    kid = f"ed25519:{device_id}"
    device = _signed({"user_id": user_id, "device_id": device_id,
                      "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                      "keys": {kid: _b64(bytes(key.verify_key)),
                               f"curve25519:{device_id}": _b64(secrets.token_bytes(32))}},
                     user_id, kid, key)
    otks = {f"signed_curve25519:A{i:04d}": _signed({"key": _b64(secrets.token_bytes(32))}, user_id, kid, key)
            for i in range(20)}
    fallback = {"signed_curve25519:FB": _signed({"key": _b64(secrets.token_bytes(32)), "fallback": True},
                                                 user_id, kid, key)}
    return {"device_keys": device, "one_time_keys": otks, "fallback_keys": fallback}


@dataclass
class Side:
    label: str
    server: RunningServer
    sender: Account | None = None
    devices: list[tuple[str, str]] = field(default_factory=list)  # (token, since)
    device_ids: list[str] = field(default_factory=list)
    recipient: str = ""
    users: list[Account] = field(default_factory=list)
    results: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


async def call(session: aiohttp.ClientSession, side: Side, method: str, path: str, token: str,
               body: Any = None, params: dict[str, str] | None = None) -> dict[str, Any]:
    async with session.request(method, side.server.base_url + V3 + path, json=body, params=params,
                               headers={"Authorization": f"Bearer {token}"}) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {str(data)[:200]}")
        return dict(data)


async def setup(session: aiohttp.ClientSession, side: Side, devices: int, users: int) -> None:
    accounts = [Account(f"e2ee{secrets.token_hex(3)}{i}", PASSWORD) for i in range(users + 2)]
    result = await register_users(side.server.base_url, accounts, 5)
    if result.failed:
        raise RuntimeError(f"registration failed: {result.errors[:3]}")
    side.sender, recipient, side.users = accounts[0], accounts[1], accounts[2:]
    side.recipient = str(recipient.user_id)
    for _ in range(devices):
        async with session.post(side.server.base_url + V3 + "/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": recipient.username},
                "password": PASSWORD}) as resp:
            login = await resp.json()
        first = await call(session, side, "GET", "/sync", login["access_token"], params={"timeout": "0"})
        side.devices.append((login["access_token"], first["next_batch"]))
        side.device_ids.append(login["device_id"])
    for acct in side.users:
        who = await call(session, side, "GET", "/account/whoami", str(acct.access_token))
        await call(session, side, "POST", "/keys/upload", str(acct.access_token),
                   key_upload(str(acct.user_id), who["device_id"]))


async def key_share(side: Side, round_no: int) -> float:
    """The time from the PUT's first byte to the last device's answer holding the message. The body is
    encoded and answers are parsed outside that time: the load client's own cost is not the server's."""
    assert side.sender is not None
    marker = f"r{round_no}-{secrets.token_hex(4)}"
    payload = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": _b64(secrets.token_bytes(32)),
               "ciphertext": {"k": {"type": 0, "body": _b64(secrets.token_bytes(768))}}, "marker": marker}
    body = encode_canonical_json({"messages": {side.recipient: {d: payload for d in side.device_ids}}})
    got: list[float] = []
    needle = marker.encode()

    async def device(i: int, conn: RawConnection) -> None:
        token, since = side.devices[i]
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            status, raw = await conn.request("GET", f"{V3}/sync?since={quote(since)}&timeout=10000", headers=headers)
            arrived = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"GET /sync: {status} {raw[:200]!r}")
            if needle in raw:
                got.append(arrived)
                break
            since = json.loads(raw)["next_batch"]
        answer = json.loads(raw)
        if not any(e["content"].get("marker") == marker for e in answer.get("to_device", {}).get("events", [])):
            raise RuntimeError(f"device {i}: the marker is not in its to-device events")
        side.devices[i] = (token, answer["next_batch"])

    # Every device is already waiting in /sync when the key share is sent, as real clients are.
    # One bare keep-alive connection per device (bench/raw_http.py), and one for the sender: 100
    # answers arrive at once, and aiohttp's client would spend longer taking them in than the server
    # spends sending them.
    connections = [await RawConnection.open(side.server.base_url) for _ in range(len(side.devices) + 1)]
    *device_connections, sender_connection = connections
    waiting = [asyncio.create_task(device(i, c)) for i, c in enumerate(device_connections)]
    await asyncio.sleep(1.0)
    headers = {"Authorization": f"Bearer {side.sender.access_token}", "Content-Type": "application/json"}
    t0 = time.perf_counter()
    status, answer = await sender_connection.request(
        "PUT", f"{V3}/sendToDevice/m.room.encrypted/{marker}", body, headers)
    try:
        if status != 200:
            raise RuntimeError(f"PUT /sendToDevice: {status} {answer[:200]!r}")
        await asyncio.gather(*waiting)
    finally:
        for c in connections:
            await c.close()
    return max(got) - t0


async def rate(session: aiohttp.ClientSession, side: Side, path: str, body: dict[str, Any], requests: int,
               concurrency: int) -> float:
    """Requests/s of one POST, `concurrency` keep-alive connections each with one request in flight.
    Answers are read whole but not parsed (the first is, to check it), over bare connections
    (bench/raw_http.py): the load client must not be what limits the rate (a keys/query answer for
    50 users is 25 KB)."""
    token = str(side.users[0].access_token)
    payload = encode_canonical_json(body)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    await call(session, side, "POST", path, token, body)
    connections = [await RawConnection.open(side.server.base_url) for _ in range(concurrency)]
    left = [requests]

    async def worker(conn: RawConnection) -> None:
        while left[0] > 0:
            left[0] -= 1
            status, answer = await conn.request("POST", V3 + path, payload, headers)
            if status != 200:
                raise RuntimeError(f"POST {path}: {status} {answer[:200]!r}")

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in connections))
        return requests / (time.perf_counter() - t0)
    finally:
        for c in connections:
            await c.close()


async def run_round(session: aiohttp.ClientSession, side: Side, round_no: int, args: argparse.Namespace) -> None:
    whoami = [await call(session, side, "GET", "/account/whoami", str(a.access_token)) for a in side.users]
    query: dict[str, Any] = {"device_keys": {w["user_id"]: [] for w in whoami}}
    claim = {"one_time_keys": {w["user_id"]: {w["device_id"]: "signed_curve25519"} for w in whoami}}
    def record(name: str, value: float, cpu0: float, per: int) -> None:
        side.results.setdefault(name, []).append(value)
        side.results.setdefault(f"{name.split(' (')[0]} server CPU (ms/op)", []).append(
            1000 * (side.server.cpu_seconds() - cpu0) / per)

    try:
        cpu0 = side.server.cpu_seconds()
        record("key share (s)", await key_share(side, round_no), cpu0, 1)
        cpu0 = side.server.cpu_seconds()
        record("keys/query (req/s)", await rate(session, side, "/keys/query", query, args.requests,
                                                args.concurrency), cpu0, args.requests)
        cpu0 = side.server.cpu_seconds()
        record("keys/claim (req/s)", await rate(session, side, "/keys/claim", claim, args.requests,
                                                args.concurrency), cpu0, args.requests)
    except Exception as e:  # noqa: BLE001 - reported, the run goes on
        side.failures.append(f"{side.label} round {round_no}: {e}")


async def main_async(args: argparse.Namespace) -> int:
    pg = (PostgresAdmin(args.pg_url) if args.pg_url else PostgresAdmin()) if args.db == "postgres" else None
    sides: list[Side] = []
    try:
        if args.only in (None, "whispr"):
            sides.append(Side("whispr", await asyncio.to_thread(start_whispr, db=args.db, pg=pg,
                                                                python=args.whispr_python)))
        if args.only in (None, "synapse"):
            sides.append(Side("synapse", await asyncio.to_thread(start_synapse, db=args.db, pg=pg)))
    except ServerStartError as e:
        print(f"a server did not start: {e}", file=sys.stderr)
        for s in sides:
            s.server.stop()
        return 2
    try:
        connector = aiohttp.TCPConnector(limit=args.devices + 50)  # every device long-polls at once
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), connector=connector) as session:
            for side in sides:
                await setup(session, side, args.devices, args.users)
            for round_no in range(args.rounds):
                for side in sides:
                    await run_round(session, side, round_no, args)
    finally:
        for side in sides:
            side.server.stop()
    print(f"\n{args.devices}-device key share, keys/query and keys/claim for {args.users} users "
          f"({args.requests} requests, {args.concurrency} in flight), db={args.db}, median of {args.rounds} rounds\n")
    names = ["key share (s)", "key share server CPU (ms/op)", "keys/query (req/s)", "keys/query server CPU (ms/op)",
             "keys/claim (req/s)", "keys/claim server CPU (ms/op)"]
    labels = [s.label for s in sides]
    print("| metric | " + " | ".join(labels) + (" | Whispr ÷ Synapse |" if len(sides) == 2 else " |"))
    print("| --- " * (len(labels) + 1 + (len(sides) == 2)) + "|")
    for name in names:
        values = [statistics.median(s.results[name]) if s.results.get(name) else float("nan") for s in sides]
        ratio = f" | {values[0] / values[1]:.2f}" if len(values) == 2 and values[1] else ""
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + ratio + " |")
    failures = [f for s in sides for f in s.failures]
    for f in failures[:10]:
        print("failure:", f, file=sys.stderr)
    return 1 if failures else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default=None)
    p.add_argument("--only", choices=["whispr", "synapse"], default=None)
    p.add_argument("--whispr-python", default=None, help="interpreter (or wrapper) to run Whispr with")
    sys.exit(asyncio.run(main_async(p.parse_args())))


if __name__ == "__main__":
    main()
