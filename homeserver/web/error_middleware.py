"""Middlewares: Matrix JSON errors for everything, request IDs, CORS."""

from __future__ import annotations

import itertools
import logging
import secrets
from typing import Awaitable, Callable

from aiohttp import web

from homeserver.errors import MatrixError, UIARequired
from homeserver.web.json_output import json_response
from storage.database import UnstorableValue

log = logging.getLogger("whispr.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
}


# Request IDs: this process's random prefix and a counter (cheap enough for every request).
_REQUEST_ID_PREFIX = secrets.token_hex(3)
_request_numbers = itertools.count(1)
REQUEST_ID = web.RequestKey("request_id", str)


def request_id(request: web.BaseRequest) -> str:
    """This request's ID for the logs (the access log line and any error), made on first use."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = f"{_REQUEST_ID_PREFIX}-{next(_request_numbers)}"
    return rid


def error_response(status: int, errcode: str, error: str, **extra: object) -> web.Response:
    return json_response({"errcode": errcode, "error": error, **extra}, status=status, headers=CORS_HEADERS)


@web.middleware
async def matrix_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return web.Response(headers=CORS_HEADERS)
    try:
        response = await handler(request)
    except MatrixError as e:
        return json_response(e.to_json(), status=e.status, headers=CORS_HEADERS)
    except UIARequired as e:
        return json_response(e.body, status=401, headers=CORS_HEADERS)
    except web.HTTPNotFound:
        return error_response(404, "M_UNRECOGNIZED", "Unrecognized request")
    except web.HTTPMethodNotAllowed:
        return error_response(405, "M_UNRECOGNIZED", "Method not allowed for this endpoint")
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "M_TOO_LARGE", "Request body is too large")
    except UnstorableValue as e:
        log.info("refused %s %s: %s", request.method, request.path, e)
        return error_response(400, "M_INVALID_PARAM", "The request holds a value this server cannot store "
                      "(a NUL character, or an integer beyond 64 bits)")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, "M_UNKNOWN", e.reason)
    except Exception as e:
        if isinstance(e, ConnectionResetError) and (request.transport is None or request.transport.is_closing()):
            raise  # our client is gone (or was cut off as too slow): nobody to answer, nothing to log
        rid = request_id(request)
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        return error_response(500, "M_UNKNOWN", f"Internal server error (request {rid})")
    response.headers.update(CORS_HEADERS)
    return response
