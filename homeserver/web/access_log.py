"""The access log: one line per request on the `whispr.access` logger, on both listeners.

    GET /_matrix/client/v3/sync?since=s1&access_token=<redacted> 200 12.3ms @alice:example.org a1b2c3-42

Method, path with the values of secret query parameters replaced, status, duration, who asked
(the user ID of the access token, or the origin server of an X-Matrix request; `-` if nobody
authenticated) and the request ID that error lines carry too. aiohttp calls `log` after the
response is written, synchronously; `logger.info` drops the line at once when INFO is off for
`whispr.access`, and the path is redacted only when the line is formatted.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from homeserver.web.error_middleware import request_id

access_logger = logging.getLogger("whispr.access")

# Who made the request: set by client_api.http.requester and the federation X-Matrix check.
REQUESTER = web.RequestKey("requester", str)
# Query parameters whose values are credentials (tokens, the email-validation link's secrets).
SECRET_QUERY_PARAMS = frozenset({"access_token", "token", "client_secret", "sid", "login_token",
                                 "refresh_token", "code", "password"})
REDACTED = "<redacted>"


def redacted_path(raw_path: str) -> str:
    """The path and query as received, with the values of SECRET_QUERY_PARAMS replaced."""
    path, sep, query = raw_path.partition("?")
    if not sep:
        return path
    parts = []
    for part in query.split("&"):
        name, eq, _value = part.partition("=")
        if eq and unquote(name).lower() in SECRET_QUERY_PARAMS:
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{path}?{'&'.join(parts)}"


class _Path:
    """The request's redacted path, computed only when the line is formatted."""

    __slots__ = ("_raw",)

    def __init__(self, raw: str) -> None:
        self._raw = raw

    def __str__(self) -> str:
        return redacted_path(self._raw)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook (`access_log_class`), writing the line described above."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.1fms %s %s", request.method, _Path(request.raw_path), response.status,
                         time * 1000, request.get(REQUESTER, "-"), request_id(request))
