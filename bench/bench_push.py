"""The send path with push evaluation: Whispr against Synapse, on this machine, in the same run.

    python -m bench.bench_push [--db sqlite|postgres] [--members 500] [--senders 20] [--per-sender 25]
                               [--rounds 1] [--baseline /path/to/other/checkout] [--json FILE]

Every server evaluates every message's push rules for every local member of the room (Synapse
always does; in Whispr it is the send path). Phases, on each server in turn (alternating the
order per round):

  big    --senders users send --per-sender messages each, one after another, into one room of
         --members local members (the senders plus idle members who never sync)
  pairs  the same senders, each into a room of two (itself and a partner): the same load with
         one user to evaluate per message
  fanout bench_rooms' fan-out: --receivers members each holding a long-poll /sync (whose rooms
         carry their notification counts); a message is sent when every receiver got the last

The report gives messages/s, latency and server CPU per message, the Whispr ÷ Synapse ratios, and
Whispr's big ÷ pairs ratio (the issue's targets: ≥ 10× Synapse's messages/s in the big room, and
the big room at no less than half the pairs figure). --baseline runs a second Whispr from another
checkout (e.g. the main branch, before push evaluation) beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import bench_rooms
from bench.bench_rooms import PASSWORD, CpuMeter, Fanout, SendPhase, _session
from bench.client import Account, create_room, join_room, register_users, run_phase, run_workers, send_message
from bench.servers import SYNAPSE_VERSION, PostgresAdmin, RunningServer, start_synapse, start_whispr, synapse_python


@dataclass
class Side:
    label: str
    server: RunningServer
    senders: list[Account] = field(default_factory=list)
    rooms: dict[str, str] = field(default_factory=dict)
    pair_rooms: list[str] = field(default_factory=list)
    results: dict[str, list[SendPhase]] = field(default_factory=lambda: {"big": [], "pairs": []})
    fan: bench_rooms.Side | None = None  # the fan-out's users and room, as bench_rooms keeps them
    fanouts: list[Fanout] = field(default_factory=list)


async def setup(side: Side, args: argparse.Namespace, tag: str) -> None:
    base = side.server.base_url
    side.senders = [Account(f"p{tag}s{i}", PASSWORD) for i in range(args.senders)]
    partners = [Account(f"p{tag}p{i}", PASSWORD) for i in range(args.senders)]
    idle = [Account(f"p{tag}m{i}", PASSWORD) for i in range(max(0, args.members - args.senders))]
    t0 = time.perf_counter()
    reg = await register_users(base, [*side.senders, *partners, *idle], 10)
    if reg.failed:
        raise RuntimeError(f"{side.label}: {reg.failed} registrations failed: {reg.errors[:3]}")
    async with _session(limit=10) as session:
        big = await create_room(session, base, side.senders[0], name="push bench big", preset="public_chat")
        side.rooms["big"] = big
        joins = [(a, big) for a in [*side.senders[1:], *idle]]
        for sender, partner in zip(side.senders, partners):
            room = await create_room(session, base, sender, name="push bench pair", preset="public_chat")
            side.pair_rooms.append(room)
            joins.append((partner, room))

        async def op(s: object, i: int) -> None:
            await join_room(s, base, joins[i][0], joins[i][1])  # type: ignore[arg-type]

        if args.receivers:
            fan = side.fan = bench_rooms.Side(side.label, server=side.server, sender=side.senders[0])
            fan.receivers = [Account(f"p{tag}f{i}", PASSWORD) for i in range(args.receivers)]
            more = await register_users(base, fan.receivers, 10)
            if more.failed:
                raise RuntimeError(f"{side.label}: {more.failed} registrations failed: {more.errors[:3]}")
            fan.rooms["fanout"] = await create_room(session, base, side.senders[0], name="push bench fan-out")
            joins += [(a, fan.rooms["fanout"]) for a in fan.receivers]

        res = await run_phase("join", len(joins), 5, op)
        if res.failed:
            raise RuntimeError(f"{side.label}: {res.failed} joins failed: {res.errors[:3]}")
    print(f"{side.label}: {len(reg.latencies_s)} users, {len(joins)} joins in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr)


async def phase(side: Side, args: argparse.Namespace, name: str) -> SendPhase:
    base = side.server.base_url
    run = secrets.token_hex(3)

    def room_of(w: int) -> str:
        return side.rooms["big"] if name == "big" else side.pair_rooms[w]

    async def op(session: object, w: int, j: int) -> None:
        await send_message(session, base, side.senders[w], room_of(w), f"{name}{run}-{w}-{j}",  # type: ignore[arg-type]
                           {"msgtype": "m.text", "body": f"{name} {w} {j} hello there"})

    meter = CpuMeter(side.server, args.db == "postgres")
    meter.start()
    result = await run_workers(name, len(side.senders), args.per_sender, op)
    return SendPhase(result, *meter.stop())


def median(values: list[float]) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def report(sides: list[Side], args: argparse.Namespace) -> str:
    def thr(side: Side, name: str) -> float:
        return median([p.phase.throughput for p in side.results[name]])

    def cpu(side: Side, name: str) -> float:
        return median([p.cpu_ms_per_op(args.db == "postgres") for p in side.results[name]])

    def pct(side: Side, name: str, q: float) -> float:
        lat = sorted(x for p in side.results[name] for x in p.phase.latencies_s)
        return 1000 * lat[min(len(lat) - 1, max(0, int(q / 100 * len(lat) + 0.5) - 1))] if lat else float("nan")

    lines = [f"## Push benchmark: database {args.db}, {args.rounds} round(s)", "",
             (f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; Synapse {SYNAPSE_VERSION}. "
              f"{args.senders} senders × {args.per_sender} messages; big room: {args.members} members."), "",
             "| server | room | messages/s | p50 ms | p99 ms | server CPU ms/msg |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for side in sides:
        for name in ("big", "pairs"):
            lines.append(f"| {side.label} | {name} | {thr(side, name):.1f} | {pct(side, name, 50):.1f} "
                         f"| {pct(side, name, 99):.1f} | {cpu(side, name):.2f} |")
    by = {s.label: s for s in sides}
    w, s = by.get("Whispr"), by.get("Synapse")
    lines += ["", "| ratio | value |", "| --- | ---: |"]
    if w and s:
        lines.append(f"| Whispr ÷ Synapse messages/s, big room (goal ≥ 10) | {thr(w, 'big') / thr(s, 'big'):.2f} |")
        lines.append(f"| Synapse ÷ Whispr CPU per message, big room | {cpu(s, 'big') / cpu(w, 'big'):.2f} |")
        lines.append(f"| Whispr ÷ Synapse messages/s, pairs | {thr(w, 'pairs') / thr(s, 'pairs'):.2f} |")
    if w:
        lines.append(f"| Whispr pairs ÷ big messages/s (goal ≤ 2) | {thr(w, 'pairs') / thr(w, 'big'):.2f} |")
    b = by.get("Whispr baseline")
    if w and b:
        lines.append(f"| Whispr ÷ baseline messages/s, big room | {thr(w, 'big') / thr(b, 'big'):.2f} |")
        lines.append(f"| Whispr ÷ baseline messages/s, pairs | {thr(w, 'pairs') / thr(b, 'pairs'):.2f} |")

    def fan_p(side: Side, q: float) -> float:
        lat = sorted(x for f in side.fanouts for x in f.latencies_s)
        return 1000 * lat[min(len(lat) - 1, max(0, int(q / 100 * len(lat) + 0.5) - 1))] if lat else float("nan")

    if any(side.fanouts for side in sides):
        lines += ["", (f"Fan-out: {args.receivers} receivers × {args.fanout_messages} messages, each receiver's "
                       "/sync carrying its room's notification counts."), "",
                  "| server | delivery p50 ms | p99 ms | delivered |", "| --- | ---: | ---: | ---: |"]
        for side in sides:
            lines.append(f"| {side.label} | {fan_p(side, 50):.1f} | {fan_p(side, 99):.1f} "
                         f"| {sum(f.delivered for f in side.fanouts)}/{sum(f.expected for f in side.fanouts)} |")
        if w and s and w.fanouts and s.fanouts:
            lines.append(f"\nSynapse ÷ Whispr fan-out p99: {fan_p(s, 99) / fan_p(w, 99):.2f}")
        b0 = by.get("Whispr baseline")
        if w and b0 and w.fanouts and b0.fanouts:
            lines.append(f"\nbaseline ÷ Whispr fan-out p99: {fan_p(b0, 99) / fan_p(w, 99):.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_push", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--members", type=int, default=500)
    p.add_argument("--senders", type=int, default=20)
    p.add_argument("--per-sender", type=int, default=25)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--receivers", type=int, default=50, help="fan-out receivers (0: no fan-out phase)")
    p.add_argument("--fanout-messages", type=int, default=20)
    p.add_argument("--delivery-timeout", type=float, default=30.0)
    p.add_argument("--only", choices=["whispr", "synapse"])
    p.add_argument("--baseline", type=Path, help="another Whispr checkout to run beside (e.g. main)")
    p.add_argument("--synapse-python", default=None)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


async def main_async(args: argparse.Namespace) -> int:
    pg = PostgresAdmin()
    sides: list[Side] = []
    try:
        if args.only in (None, "whispr"):
            sides.append(Side("Whispr", start_whispr(db=args.db, pg=pg)))
            if args.baseline is not None:
                sides.append(Side("Whispr baseline", start_whispr(db=args.db, pg=pg, repo=args.baseline)))
        if args.only in (None, "synapse"):
            python = args.synapse_python or synapse_python(need_postgres=args.db == "postgres")
            sides.append(Side("Synapse", start_synapse(python=python, db=args.db, pg=pg)))
        tag = secrets.token_hex(2)
        for side in sides:
            await setup(side, args, tag)
        for round_no in range(args.rounds):
            order = sides if round_no % 2 == 0 else sides[::-1]
            for name in ("big", "pairs"):
                for side in order:
                    result = await phase(side, args, name)
                    side.results[name].append(result)
                    print(f"round {round_no} {side.label:16s} {name:5s} {result.phase.throughput:8.1f} msg/s "
                          f"CPU {result.cpu_ms_per_op():.2f} ms/msg failed {result.phase.failed}", file=sys.stderr)
            for side in order:
                if side.fan is not None:
                    fan = await bench_rooms.phase_fanout(side.fan, args, "sync")
                    side.fanouts.append(fan)
                    print(f"round {round_no} {side.label:16s} fanout {fan.delivered}/{fan.expected} delivered "
                          f"p99 {1000 * fan.percentile(99):.1f} ms", file=sys.stderr)
        print(report(sides, args))
        if args.json:
            args.json.write_text(json.dumps({s.label: {k: [asdict(p) for p in v] for k, v in s.results.items()}
                                             for s in sides}))
        failed = any(p.phase.failed for s in sides for v in s.results.values() for p in v)
        return 1 if failed or any(f.delivered < f.expected for s in sides for f in s.fanouts) else 0
    finally:
        for side in sides:
            side.server.stop()


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
