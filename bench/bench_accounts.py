"""Registrations/s and logins/s: Whispr against Synapse, on this machine, in the same run.

    python -m bench.bench_accounts [--users 200] [--concurrency 10] [--db sqlite|postgres]
                                   [--rounds 2] [--hash-cost low|default] [--only whispr|synapse]

Both servers are started once (fresh data, no rate limits) and stay up; the rounds
then alternate: Whispr, Synapse, Whispr, Synapse, ... Each round registers --users new
accounts (two-step UIA) and then logs in --users times, and samples the server's CPU
time from /proc around each phase. The table shows the median over rounds. The exit
status is 1 if any request failed, 2 if a server could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from bench.client import Account, PhaseResult, login_users, register_users
from bench.servers import (SYNAPSE_VERSION, PostgresAdmin, RunningServer, ServerStartError,
                           start_synapse, start_whispr, synapse_python)

PASSWORD = "bench-Passw0rd-123"
# --hash-cost presets: "low" is the cheapest each side allows, "default" each side's shipped default.
HASH_COSTS = {
    "low": {"argon2_opslimit": 1, "argon2_memlimit_kib": 8192, "bcrypt_rounds": 4},
    "default": {"argon2_opslimit": 2, "argon2_memlimit_kib": 65536, "bcrypt_rounds": 12},
}


@dataclass
class RoundResult:
    round: int
    register: PhaseResult
    login: PhaseResult
    register_cpu_s: float
    login_cpu_s: float
    rss_kb: int


@dataclass
class Side:
    """One server under test and what it measured."""

    label: str
    hash_note: str
    server: RunningServer | None = None
    rounds: list[RoundResult] = field(default_factory=list)
    other_failures: list[str] = field(default_factory=list)  # warmup errors, a server that died

    def failures(self) -> int:
        return len(self.other_failures) + sum(r.register.failed + r.login.failed for r in self.rounds)

    def errors(self) -> list[str]:
        out = list(self.other_failures)
        for r in self.rounds:
            out += [f"round {r.round} {p.name}: {e}" for p in (r.register, r.login) for e in p.errors]
        return out


async def run_round(side: Side, round_no: int, users: int, concurrency: int, tag: str) -> RoundResult:
    """Register ``users`` fresh accounts, then log in ``users`` times; sample CPU around each."""
    server = side.server
    assert server is not None
    accounts = [Account(f"b{tag}r{round_no}u{i}", PASSWORD) for i in range(users)]
    cpu0 = server.cpu_seconds()
    reg = await register_users(server.base_url, accounts, concurrency)
    cpu1 = server.cpu_seconds()
    registered = [a for a in accounts if a.user_id] or accounts[:1]
    login = await login_users(server.base_url, registered, users, concurrency)
    cpu2 = server.cpu_seconds()
    return RoundResult(round_no, reg, login, cpu1 - cpu0, cpu2 - cpu1, server.rss_kb())


async def warm_up(side: Side, users: int, concurrency: int, tag: str) -> None:
    """A few uncounted registrations and logins: first connections, caches, lazy imports."""
    if users <= 0:
        return
    result = await run_round(side, -1, users, concurrency, tag)
    side.other_failures = [f"warmup: {e}" for e in result.register.errors + result.login.errors]
    if result.register.failed + result.login.failed > len(side.other_failures):
        side.other_failures.append("warmup: ... more failures")


async def run_all(sides: list[Side], args: argparse.Namespace) -> None:
    tag = secrets.token_hex(2)
    for side in sides:
        await warm_up(side, args.warmup, args.concurrency, tag)
        if side.other_failures:
            print(f"{side.label}: warmup failed, skipping its rounds", file=sys.stderr)
    active = [s for s in sides if not s.other_failures]
    for round_no in range(args.rounds):
        for side in active:
            r = await run_round(side, round_no, args.users, args.concurrency, tag)
            side.rounds.append(r)
            print(f"round {round_no} {side.label:8s} register {r.register.throughput:8.1f}/s  "
                  f"login {r.login.throughput:8.1f}/s  failures {r.register.failed + r.login.failed}",
                  file=sys.stderr)


# --------------------------------------------------------------------------- report


def _median(side: Side, fn: Callable[[RoundResult], float]) -> float:
    values = [fn(r) for r in side.rounds]
    return statistics.median(values) if values else float("nan")


def _pooled_percentile(side: Side, phase: str, q: float) -> float:
    pooled = PhaseResult(phase, 0, 0)
    for r in side.rounds:
        pooled.latencies_s += getattr(r, phase).latencies_s
    return pooled.percentile(q)


def _per_op_ms(cpu_s: float, phase: PhaseResult) -> float:
    return 1000 * cpu_s / phase.ok if phase.ok else float("nan")


def _fmt(x: float) -> str:
    if x != x:  # NaN
        return "–"
    return f"{x:,.1f}" if abs(x) < 1000 else f"{x:,.0f}"


def _ratio(a: float, b: float) -> str:
    if a != a or b != b or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def report(sides: list[Side], args: argparse.Namespace, load_before: tuple[float, ...]) -> str:
    by = {s.label: s for s in sides}
    w, s = by.get("Whispr"), by.get("Synapse")
    metrics: list[tuple[str, Callable[[Side], float]]] = [
        ("registrations/s ↑", lambda x: _median(x, lambda r: r.register.throughput)),
        ("logins/s ↑", lambda x: _median(x, lambda r: r.login.throughput)),
        ("registration latency p50, ms ↓", lambda x: 1000 * _pooled_percentile(x, "register", 50)),
        ("registration latency p95, ms ↓", lambda x: 1000 * _pooled_percentile(x, "register", 95)),
        ("login latency p50, ms ↓", lambda x: 1000 * _pooled_percentile(x, "login", 50)),
        ("login latency p95, ms ↓", lambda x: 1000 * _pooled_percentile(x, "login", 95)),
        ("server CPU per registration, ms ↓",
         lambda x: _median(x, lambda r: _per_op_ms(r.register_cpu_s, r.register))),
        ("server CPU per login, ms ↓", lambda x: _median(x, lambda r: _per_op_ms(r.login_cpu_s, r.login))),
        ("server RSS after the last round, MiB ↓",
         lambda x: x.rounds[-1].rss_kb / 1024 if x.rounds else float("nan")),
    ]
    lines = [
        f"## Accounts benchmark: {args.users} users × {args.rounds} rounds, concurrency {args.concurrency}, "
        f"database {args.db}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"Synapse {SYNAPSE_VERSION}; client and servers share the machine.",
        "",
        "| metric | Whispr | Synapse | ratio Whispr/Synapse |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, fn in metrics:
        wv = fn(w) if w else float("nan")
        sv = fn(s) if s else float("nan")
        lines.append(f"| {name} | {_fmt(wv)} | {_fmt(sv)} | {_ratio(wv, sv)} |")
    lines.append(f"| password hash | {w.hash_note if w else '–'} | {s.hash_note if s else '–'} | |")
    lines += ["", "↑ higher is better, ↓ lower is better; throughput and CPU are medians over rounds, "
              "latency percentiles pool all rounds.", "",
              "| round | server | registrations/s | logins/s | CPU ms/registration | CPU ms/login | failed |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for round_no in range(args.rounds):
        for side in sides:
            for r in side.rounds:
                if r.round == round_no:
                    lines.append(
                        f"| {round_no} | {side.label} | {_fmt(r.register.throughput)} | {_fmt(r.login.throughput)} "
                        f"| {_fmt(_per_op_ms(r.register_cpu_s, r.register))} "
                        f"| {_fmt(_per_op_ms(r.login_cpu_s, r.login))} | {r.register.failed + r.login.failed} |")
    return "\n".join(lines)


def raw_results(sides: list[Side], args: argparse.Namespace) -> dict[str, object]:
    return {"args": vars(args), "sides": [
        {"label": s.label, "hash": s.hash_note, "other_failures": s.other_failures,
         "rounds": [asdict(r) for r in s.rounds]} for s in sides]}


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_accounts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=200, help="registrations and logins per round (200)")
    p.add_argument("--concurrency", type=int, default=10, help="requests in flight (10)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per server, alternating (2)")
    p.add_argument("--warmup", type=int, default=20, help="uncounted users per server first (20)")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default=None,
                   help="admin URL for --db postgres (default $WHISPR_TEST_POSTGRES or "
                        "postgresql://postgres@127.0.0.1:5432/postgres)")
    p.add_argument("--hash-cost", choices=sorted(HASH_COSTS), default="low",
                   help="low: argon2id ops=1 mem=8MiB vs bcrypt 4 rounds; default: each server's default")
    p.add_argument("--argon2-opslimit", type=int, help="override Whispr's argon2id opslimit")
    p.add_argument("--argon2-memlimit-kib", type=int, help="override Whispr's argon2id memlimit")
    p.add_argument("--bcrypt-rounds", type=int, help="override Synapse's bcrypt rounds")
    p.add_argument("--only", choices=["whispr", "synapse"], help="run one server only")
    p.add_argument("--whispr-python", default=sys.executable, help="interpreter for Whispr (this one)")
    p.add_argument("--synapse-python", default=None,
                   help="interpreter with Synapse (default $WHISPR_SYNAPSE_PYTHON, else bench/.venv-synapse)")
    p.add_argument("--json", type=Path, help="also write raw results (all latencies) here")
    p.add_argument("--keep-data", action="store_true", help="keep temp dirs and databases for inspection")
    args = p.parse_args(argv)
    cost = HASH_COSTS[args.hash_cost]
    for key in cost:
        if getattr(args, key) is None:
            setattr(args, key, cost[key])
    if args.users < 1 or args.concurrency < 1 or args.rounds < 1:
        p.error("--users, --concurrency and --rounds must be at least 1")
    return args


def start_servers(args: argparse.Namespace) -> list[Side]:
    """Start the servers asked for; on failure stop the ones already up and re-raise."""
    pg = PostgresAdmin(args.pg_url) if args.pg_url else PostgresAdmin()
    sides: list[Side] = []
    try:
        if args.only in (None, "whispr"):
            side = Side("Whispr", f"argon2id ops={args.argon2_opslimit} mem={args.argon2_memlimit_kib // 1024} MiB")
            sides.append(side)
            side.server = start_whispr(python=args.whispr_python, db=args.db, pg=pg,
                                       argon2_opslimit=args.argon2_opslimit,
                                       argon2_memlimit_kib=args.argon2_memlimit_kib, keep_data=args.keep_data)
            print(f"Whispr up: {side.server.base_url} pid {side.server.pid} ({side.server.data_dir})",
                  file=sys.stderr)
        if args.only in (None, "synapse"):
            side = Side("Synapse", f"bcrypt rounds={args.bcrypt_rounds}")
            sides.append(side)
            python = args.synapse_python or synapse_python(need_postgres=args.db == "postgres")
            side.server = start_synapse(python=python, db=args.db, pg=pg, bcrypt_rounds=args.bcrypt_rounds,
                                        keep_data=args.keep_data)
            print(f"Synapse up: {side.server.base_url} pid {side.server.pid} ({side.server.data_dir})",
                  file=sys.stderr)
    except BaseException:
        stop_servers(sides)
        raise
    return sides


def stop_servers(sides: list[Side]) -> None:
    for side in sides:
        if side.server is not None:
            side.server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    try:
        sides = start_servers(args)
    except (ServerStartError, RuntimeError, OSError) as e:
        print(f"error: could not start a server: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_all(sides, args))
        for side in sides:
            assert side.server is not None
            if not side.server.alive():
                side.other_failures.append(f"server died during the run{side.server.log_tail(20)}")
    finally:
        stop_servers(sides)
    print(report(sides, args, load_before))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw_results(sides, args), indent=1, default=str))
    failed = sum(s.failures() for s in sides)
    if failed:
        print(f"\n{failed} request(s) failed:", file=sys.stderr)
        for side in sides:
            for message in side.errors()[:10]:
                print(f"  {side.label}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
