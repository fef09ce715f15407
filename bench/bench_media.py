"""Media repository: upload and download MB/s, thumbnail requests/s: Whispr against Synapse.

    python -m bench.bench_media [--files 20] [--size-mb 5] [--rounds 2] [--db sqlite|postgres]
                                [--big-mb 100] [--only whispr|synapse] [--quick] [--json PATH]

Both servers start once (fresh data, no rate limits, upload cap raised) and stay up; rounds
alternate between them. Each round, on each server:
  upload seq / conc   --files files of --size-mb random bytes (fresh bytes each phase, so content
                      deduplication cannot help), one at a time, then 4 in flight;
  download seq / conc every file of the round through the authenticated
                      /_matrix/client/v1/media/download, one at a time, then 8 in flight, bodies
                      streamed and counted (and the first one hashed);
  thumbnails          a fresh 1600x1200 JPEG and PNG: the first 320x240 scale and 96x96 crop
                      request of each (generation; Synapse makes its thumbnails while uploading),
                      then --thumb-requests cached requests, 8 in flight.
Once per server: a --big-mb upload and download, both streamed, and the server's peak RSS
(VmHWM) before and after. Server CPU comes from /proc around each phase.
Exit status: 0 all requests succeeded, 1 some failed, 2 a server did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import platform
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp

from bench.client import Account, register_users
from bench.servers import (SYNAPSE_VERSION, PostgresAdmin, RunningServer, ServerStartError, start_synapse,
                           start_whispr, synapse_python)

UPLOAD = "/_matrix/media/v3/upload"
MEDIA = "/_matrix/client/v1/media"
MiB = 1024 * 1024
CAP_BYTES = 1024 * MiB


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    ops: int = 0
    bytes: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MiB / self.wall_s if self.wall_s else float("nan")

    @property
    def per_s(self) -> float:
        return self.ops / self.wall_s if self.wall_s else float("nan")

    @property
    def cpu_ms_per_mb(self) -> float:
        return 1000 * self.cpu_s / (self.bytes / MiB) if self.bytes else float("nan")


@dataclass
class Side:
    label: str
    server: RunningServer | None = None
    token: str = ""
    rounds: list[dict[str, Phase]] = field(default_factory=list)
    big: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _test_image(fmt: str, seed: int) -> bytes:
    from PIL import Image  # Pillow: a Whispr dependency, so in the project venv

    im = Image.effect_mandelbrot((1600, 1200), (-2.0 + seed * 1e-6, -1.2, 1.0, 1.2), 60).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, fmt, quality=90) if fmt == "JPEG" else im.save(buf, fmt)
    return buf.getvalue()


async def _timed(side: Side, name: str, ops: list[Callable[[], Awaitable[int]]], concurrency: int) -> Phase:
    """Run `ops` (each returns bytes moved) with `concurrency` in flight; wall, CPU, latencies."""
    assert side.server is not None
    phase = Phase(name)
    queue = list(reversed(ops))

    async def worker() -> None:
        while queue:
            op = queue.pop()
            t0 = time.perf_counter()
            try:
                moved = await op()
            except Exception as e:  # counted and reported, the run goes on
                if len(side.failures) < 20:
                    side.failures.append(f"{name}: {type(e).__name__}: {e}")
                else:
                    side.failures.append("...")
                continue
            phase.latencies_s.append(time.perf_counter() - t0)
            phase.ops += 1
            phase.bytes += moved

    cpu0, t0 = side.server.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall_s, phase.cpu_s = time.perf_counter() - t0, side.server.cpu_seconds() - cpu0
    return phase


async def _upload(session: aiohttp.ClientSession, side: Side, data: bytes | Callable[[], AsyncIterator[bytes]],
                  content_type: str = "application/octet-stream", length: int | None = None) -> str:
    """Upload bytes, or a stream of `length` bytes (Synapse requires a Content-Length, so no chunking)."""
    assert side.server is not None
    headers = {**side.headers, "Content-Type": content_type}
    if isinstance(data, bytes):
        body: bytes | AsyncIterator[bytes] = data
    else:
        body, headers["Content-Length"] = data(), str(length)
    async with session.post(side.server.base_url + UPLOAD, data=body, params={"filename": "f.bin"},
                            headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"upload {resp.status}: {(await resp.text())[:200]}")
        return str((await resp.json())["content_uri"])


async def _download(session: aiohttp.ClientSession, side: Side, uri: str, path: str = "download",
                    params: dict[str, str] | None = None, digest: bool = False) -> tuple[int, str]:
    assert side.server is not None
    url = f"{side.server.base_url}{MEDIA}/{path}/{uri[len('mxc://'):]}"
    size, hasher = 0, hashlib.sha256()
    async with session.get(url, headers=side.headers, params=params) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{path} {resp.status}: {(await resp.text())[:200]}")
        async for chunk in resp.content.iter_chunked(MiB):
            size += len(chunk)
            if digest:
                hasher.update(chunk)
    return size, hasher.hexdigest()


async def run_round(session: aiohttp.ClientSession, side: Side, args: argparse.Namespace, round_no: int) -> None:
    size = int(args.size_mb * MiB)
    result: dict[str, Phase] = {}
    uris: list[str] = []
    for name, concurrency in (("upload seq", 1), ("upload conc", 4)):
        blobs = [os.urandom(size) for _ in range(args.files)]
        if not uris:
            first_digest = hashlib.sha256(blobs[0]).hexdigest()

        def op(blob: bytes) -> Callable[[], Awaitable[int]]:
            async def run() -> int:
                uris.append(await _upload(session, side, blob))
                return len(blob)
            return run
        result[name] = await _timed(side, name, [op(b) for b in blobs], concurrency)
        del blobs
    # The first upload was blob 0 of "upload seq" (sequential, so in order): check its bytes.
    got_size, got_digest = await _download(session, side, uris[0], digest=True)
    if got_size != size or got_digest != first_digest:
        side.failures.append(f"round {round_no}: downloaded bytes differ from the upload")

    def dl(uri: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return (await _download(session, side, uri))[0]
        return run
    result["download seq"] = await _timed(side, "download seq", [dl(u) for u in uris], 1)
    result["download conc"] = await _timed(side, "download conc", [dl(u) for u in uris], 8)

    pictures = [(_test_image(fmt, round_no * 10 + i), ct)
                for i, (fmt, ct) in enumerate((("JPEG", "image/jpeg"), ("PNG", "image/png")))]
    images: list[str] = []

    def up(data: bytes, ct: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            images.append(await _upload(session, side, data, ct))
            return len(data)
        return run
    # Timed apart: Synapse makes its thumbnails here, Whispr on the first thumbnail request.
    result["image upload"] = await _timed(side, "image upload", [up(d, ct) for d, ct in pictures], 1)
    sizes = ({"width": "320", "height": "240", "method": "scale"}, {"width": "96", "height": "96", "method": "crop"})

    def th(uri: str, params: dict[str, str]) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            return (await _download(session, side, uri, "thumbnail", params))[0]
        return run
    result["thumbnail first"] = await _timed(side, "thumbnail first", [th(u, p) for u in images for p in sizes], 1)
    cached = [th(images[i % 2], sizes[(i // 2) % 2]) for i in range(args.thumb_requests)]
    result["thumbnail cached"] = await _timed(side, "thumbnail cached", cached, 8)
    side.rounds.append(result)
    print(f"round {round_no} {side.label:8s} " + "  ".join(
        f"{p.name} {p.mb_per_s if 'thumb' not in p.name else p.per_s:.1f}" for p in result.values()),
        file=sys.stderr)


async def big_round_trip(session: aiohttp.ClientSession, side: Side, megabytes: int) -> None:
    """Upload and download `megabytes` MiB, streamed both ways; peak RSS before and after."""
    assert side.server is not None
    before = side.server.rss_kb("VmHWM")
    chunk = os.urandom(MiB)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(megabytes):
            yield chunk
    t0 = time.perf_counter()
    uri = await _upload(session, side, body, length=megabytes * MiB)
    t1 = time.perf_counter()
    size, _ = await _download(session, side, uri)
    t2 = time.perf_counter()
    if size != megabytes * MiB:
        side.failures.append(f"big download: {size} bytes, not {megabytes * MiB}")
    after = side.server.rss_kb("VmHWM")
    side.big = {"upload MB/s": megabytes / (t1 - t0), "download MB/s": megabytes / (t2 - t1),
                "peak RSS before MiB": before / 1024, "peak RSS after MiB": after / 1024,
                "peak RSS growth MiB": (after - before) / 1024}


async def run_all(sides: list[Side], args: argparse.Namespace) -> None:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for side in sides:
            assert side.server is not None
            account = Account(f"media{secrets.token_hex(3)}", "bench-Passw0rd-123")
            result = await register_users(side.server.base_url, [account], 1)
            if not account.access_token:
                side.failures.append(f"registration failed: {result.errors}")
                continue
            side.token = account.access_token
            # Warm-up: one small upload, download and thumbnail, uncounted.
            uri = await _upload(session, side, _test_image("PNG", 999_999), "image/png")
            await _download(session, side, uri)
            await _download(session, side, uri, "thumbnail", {"width": "32", "height": "32", "method": "crop"})
        active = [s for s in sides if s.token]
        for round_no in range(args.rounds):
            order = active if round_no % 2 == 0 else list(reversed(active))
            for side in order:
                await run_round(session, side, args, round_no)
        if args.big_mb:
            for side in active:
                await big_round_trip(session, side, args.big_mb)


# --------------------------------------------------------------------------- report


def _median(side: Side, phase: str, fn: Callable[[Phase], float]) -> float:
    values = [fn(r[phase]) for r in side.rounds if phase in r]
    return statistics.median(values) if values else float("nan")


def _p50_ms(side: Side, phase: str) -> float:
    pooled = sorted(x for r in side.rounds for x in r[phase].latencies_s) if side.rounds else []
    return 1000 * pooled[len(pooled) // 2] if pooled else float("nan")


def _fmt(x: float) -> str:
    return "–" if x != x else (f"{x:,.1f}" if abs(x) < 1000 else f"{x:,.0f}")


def _ratio(a: float, b: float, lower_is_better: bool) -> str:
    if a != a or b != b or a == 0 or b == 0:
        return "–"
    return f"{(b / a if lower_is_better else a / b):.2f}×"


def report(sides: list[Side], args: argparse.Namespace, load_before: tuple[float, ...]) -> str:
    by = {s.label: s for s in sides}
    w, s = by.get("Whispr"), by.get("Synapse")
    rows: list[tuple[str, Callable[[Side], float], bool]] = [
        ("upload seq, MB/s ↑", lambda x: _median(x, "upload seq", lambda p: p.mb_per_s), False),
        ("upload conc (4), MB/s ↑", lambda x: _median(x, "upload conc", lambda p: p.mb_per_s), False),
        ("server CPU per uploaded MB, ms ↓", lambda x: _median(x, "upload seq", lambda p: p.cpu_ms_per_mb), True),
        ("download seq, MB/s ↑", lambda x: _median(x, "download seq", lambda p: p.mb_per_s), False),
        ("download conc (8), MB/s ↑", lambda x: _median(x, "download conc", lambda p: p.mb_per_s), False),
        ("server CPU per downloaded MB, ms ↓",
         lambda x: _median(x, "download seq", lambda p: p.cpu_ms_per_mb), True),
        ("image upload (1600x1200 JPEG or PNG) p50, ms ↓", lambda x: _p50_ms(x, "image upload"), True),
        ("thumbnail first request p50, ms ↓", lambda x: _p50_ms(x, "thumbnail first"), True),
        ("image upload + its 2 first thumbnails, ms ↓",
         lambda x: _p50_ms(x, "image upload") + 2 * _p50_ms(x, "thumbnail first"), True),
        ("thumbnails cached (8 in flight), req/s ↑",
         lambda x: _median(x, "thumbnail cached", lambda p: p.per_s), False),
        ("server CPU per cached thumbnail, ms ↓",
         lambda x: _median(x, "thumbnail cached", lambda p: 1000 * p.cpu_s / p.ops if p.ops else float("nan")), True),
        (f"{args.big_mb} MiB upload, MB/s ↑", lambda x: x.big.get("upload MB/s", float("nan")), False),
        (f"{args.big_mb} MiB download, MB/s ↑", lambda x: x.big.get("download MB/s", float("nan")), False),
        (f"peak RSS growth over the {args.big_mb} MiB round trip, MiB ↓",
         lambda x: x.big.get("peak RSS growth MiB", float("nan")), True),
        ("peak RSS after everything, MiB ↓", lambda x: x.big.get("peak RSS after MiB", float("nan")), True),
    ]
    lines = [
        f"## Media benchmark: {args.files} files × {args.size_mb} MiB per phase, {args.rounds} rounds, "
        f"database {args.db}", "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.node()}, {os.cpu_count()} CPUs, load average before "
        f"{' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"Synapse {SYNAPSE_VERSION}; client and servers share the machine.", "",
        "| metric | Whispr | Synapse | Whispr better by |", "| --- | ---: | ---: | ---: |"]
    for name, fn, lower in rows:
        wv, sv = (fn(w) if w else float("nan")), (fn(s) if s else float("nan"))
        lines.append(f"| {name} | {_fmt(wv)} | {_fmt(sv)} | {_ratio(wv, sv, lower)} |")
    lines += ["", "↑ higher is better, ↓ lower is better; medians over rounds. Synapse makes its thumbnails "
              "while the image uploads (dynamic_thumbnails off), Whispr on the first request."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_media", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=20, help="files per upload phase (20)")
    p.add_argument("--size-mb", type=float, default=5, help="MiB per file (5)")
    p.add_argument("--thumb-requests", type=int, default=400, help="cached thumbnail requests per round (400)")
    p.add_argument("--big-mb", type=int, default=100, help="MiB of the one big round trip (100; 0: skip)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default=None)
    p.add_argument("--only", choices=["whispr", "synapse"])
    p.add_argument("--quick", action="store_true", help="smoke run: 4 files x 1 MiB, 40 thumbnails, 10 MiB, 1 round")
    p.add_argument("--synapse-python", default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.files, args.size_mb, args.thumb_requests, args.big_mb, args.rounds = 4, 1, 40, 10, 1
    if args.files < 1 or args.rounds < 1 or args.thumb_requests < 1:
        p.error("--files, --rounds and --thumb-requests must be at least 1")
    return args


def start_servers(args: argparse.Namespace) -> list[Side]:
    pg = PostgresAdmin(args.pg_url) if args.pg_url else PostgresAdmin()
    sides: list[Side] = []
    try:
        if args.only in (None, "whispr"):
            sides.append(Side("Whispr", start_whispr(db=args.db, pg=pg, extra_config={
                "media": {"max_upload_bytes": CAP_BYTES, "max_remote_bytes": CAP_BYTES}})))
        if args.only in (None, "synapse"):
            python = args.synapse_python or synapse_python(need_postgres=args.db == "postgres")
            sides.append(Side("Synapse", start_synapse(python=python, db=args.db, pg=pg, extra_config={
                "max_upload_size": f"{CAP_BYTES // MiB}M"})))
    except BaseException:
        for side in sides:
            assert side.server is not None
            side.server.stop()
        raise
    return sides


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
    finally:
        for side in sides:
            assert side.server is not None
            if not side.server.alive():
                side.failures.append("server died during the run")
            side.server.stop()
    print(report(sides, args, load_before))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "sides": [
            {"label": s.label, "big": s.big, "failures": s.failures,
             "rounds": [{k: asdict(v) for k, v in r.items()} for r in s.rounds]} for s in sides]},
            indent=1, default=str))
    failed = [f"{s.label}: {m}" for s in sides for m in s.failures]
    if failed:
        print(f"\n{len(failed)} failure(s):", *failed[:20], sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
