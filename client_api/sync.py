"""GET /sync (long-poll) and Whispr's server-sent-events stream of the same deltas.

The SSE stream (/_matrix/client/unstable/org.whispr/sync/stream) sends each
delta as one `sync` event whose `id:` is its next_batch token, so a client that
reconnects with Last-Event-ID resumes exactly after the last delta it saw.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp_sse import sse_response

from client_api.http import CLIENT_V3, WHISPR, hs, ok, requester
from homeserver.errors import MatrixError
from homeserver.web.json_output import encode_json
from homeserver.presence.presence import STATES
from homeserver.sync.sync import SyncToken

SSE_HEARTBEAT_S = 15.0
SSE_POLL_TIMEOUT_MS = 30_000


def _timeout(request: web.Request) -> int:
    try:
        return int(request.query.get("timeout", "0"))
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", "timeout must be an integer") from None


def _set_presence(request: web.Request) -> str:
    value = request.query.get("set_presence", "online")
    if value not in STATES:
        raise MatrixError(400, "M_INVALID_PARAM", f"set_presence must be one of {', '.join(STATES)}")
    return value


async def sync(request: web.Request) -> web.Response:
    who = await requester(request)
    server = hs(request)
    since = request.query.get("since")
    full_state = request.query.get("full_state", "false") == "true"
    filt = await server.filters.resolve(who.user_id, request.query.get("filter"))
    token = SyncToken.parse(since) if since else None
    timeout = _timeout(request)
    async with server.presence.syncing(who.user_id, _set_presence(request)):
        result = await server.sync.sync(who, token, timeout, full_state, filt)
    return ok(result.body)


async def sync_stream(request: web.Request) -> web.StreamResponse:
    who = await requester(request)  # header or ?access_token= (EventSource cannot set headers)
    server = hs(request)
    raw = request.headers.get("Last-Event-ID") or request.query.get("since")
    since = SyncToken.parse(raw) if raw else None
    filt = await server.filters.resolve(who.user_id, request.query.get("filter"))
    set_presence = _set_presence(request)
    # The heartbeat's comments keep proxies from closing an idle stream.
    async with sse_response(request, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                            ping_interval=SSE_HEARTBEAT_S) as resp:
        while resp.is_connected():
            async with server.presence.syncing(who.user_id, set_presence):
                result = await server.sync.sync(who, since, SSE_POLL_TIMEOUT_MS if since else 0, False, filt)
            if not result.empty or since is None:
                await resp.send(encode_json(result.body).decode(), id=str(result.next_batch),
                                event="sync")
            since = result.next_batch
            await asyncio.sleep(0)
    return resp


def setup(app: web.Application) -> None:
    app.router.add_get(f"{CLIENT_V3}/sync", sync)
    app.router.add_get(f"{WHISPR}/sync/stream", sync_stream)
