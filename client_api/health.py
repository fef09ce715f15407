"""GET /health: "OK" while the server can reach its database (container health checks and load
balancers probe it; Synapse answers the same path with the same text)."""

from __future__ import annotations

import logging

from aiohttp import web

from client_api.http import hs
from homeserver.errors import MatrixError

log = logging.getLogger("whispr.health")


async def health(request: web.Request) -> web.Response:
    try:
        await hs(request).store.ping()
    except Exception as e:  # any failure to answer is "unhealthy", with the reason in the log
        log.warning("health check: the database does not answer: %s", e)
        raise MatrixError(503, "M_UNKNOWN", "The database does not answer") from None
    return web.Response(text="OK", content_type="text/plain")


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
