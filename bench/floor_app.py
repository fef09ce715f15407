"""The floor: an aiohttp app whose every handler returns ``{}`` (bench_rooms measures it).

    python -m bench.floor_app --config FILE      (YAML: {port: N, host: 127.0.0.1, uvloop: true})

It runs like Whispr does (``web.run_app``, no access log, uvloop unless ``uvloop: false``),
so its requests/s is what one aiohttp process on this machine can answer at best with
the same load client: the ceiling for any handler, including Whispr's send path.
The body of a PUT is not read by the handler (aiohttp discards it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import yaml
from aiohttp import web

_EMPTY = b"{}"


async def empty(request: web.Request) -> web.Response:
    return web.Response(body=_EMPTY, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", empty)  # /versions (readiness) and every other path
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor_app")
    p.add_argument("--config", required=True)
    args = p.parse_args(argv)
    with open(args.config) as f:
        config = yaml.safe_load(f) or {}
    if config.get("uvloop", True):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make_app(), host=config.get("host", "127.0.0.1"), port=int(config["port"]),
                print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
