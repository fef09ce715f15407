"""Middlewares: Matrix JSON errors for everything, request IDs, CORS."""

from __future__ import annotations

import logging
import secrets
from typing import Awaitable, Callable

from aiohttp import web

from homeserver.errors import MatrixError, UIARequired
from storage.database import UnstorableValue

log = logging.getLogger("whispr.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
}


def _error(status: int, errcode: str, error: str, **extra: object) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error, **extra}, status=status, headers=CORS_HEADERS)


@web.middleware
async def matrix_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return web.Response(headers=CORS_HEADERS)
    try:
        response = await handler(request)
    except MatrixError as e:
        return web.json_response(e.to_json(), status=e.status, headers=CORS_HEADERS)
    except UIARequired as e:
        return web.json_response(e.body, status=401, headers=CORS_HEADERS)
    except web.HTTPNotFound:
        return _error(404, "M_UNRECOGNIZED", "Unrecognized request")
    except web.HTTPMethodNotAllowed:
        return _error(405, "M_UNRECOGNIZED", "Method not allowed for this endpoint")
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "M_TOO_LARGE", "Request body is too large")
    except UnstorableValue as e:
        log.info("refused %s %s: %s", request.method, request.path, e)
        return _error(400, "M_INVALID_PARAM", "The request holds a value this server cannot store "
                      "(a NUL character, or an integer beyond 64 bits)")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, "M_UNKNOWN", e.reason)
    except Exception:
        request_id = secrets.token_hex(6)
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        return _error(500, "M_UNKNOWN", f"Internal server error (request {request_id})")
    response.headers.update(CORS_HEADERS)
    return response
