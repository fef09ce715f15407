"""The HTTP/1.1 connection under both listeners: Matrix errors even where aiohttp answers alone,
and time limits for clients that send slowly.

aiohttp's parser refuses some requests before any middleware runs (a request line over 8,190
bytes, a header too large, malformed HTTP) and would answer them in plain text; here they get
Matrix JSON too. A request head must arrive whole within `limits.header_timeout_s` of its first
byte, and a body may not stall for `limits.body_timeout_s`, so slow connections cannot pile up.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from homeserver.web.access_log import AccessLogger, access_logger
from homeserver.web.error_middleware import error_response, request_id
from homeserver.config import Config

log = logging.getLogger("whispr.http")

# aiohttp's run_app default: an idle keep-alive connection is closed after this long.
KEEPALIVE_TIMEOUT_S = 75.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    access_log: bool

    @classmethod
    def from_config(cls, config: Config) -> "ConnectionLimits":
        return cls(config.limits.header_timeout_s, config.limits.body_timeout_s, config.access_log)


class MatrixRequestHandler(RequestHandler):
    """aiohttp's connection protocol with Matrix error bodies and header/body time limits."""

    __slots__ = ("_limits", "_head_timer", "_head_count", "_body", "_body_timer", "_body_data_seen")

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        self._body: StreamReader | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_data_seen = False

    # ---- slow clients ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        in_body = self._body is not None and not self._body.is_eof()
        count = self._request_count
        super().data_received(data)
        if in_body:
            self._body_data_seen = True
        elif self._request_count != count:  # a request head is complete
            self._stop_head_timer()
            body = self._messages[-1][1] if self._messages else None
            if body is not None and not body.is_eof():
                self._watch_body(body)
        elif data and self._head_timer is None and not self._upgraded:
            self._head_count = count
            self._head_timer = self._loop.call_later(self._limits.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_count == self._head_count and self.transport is not None:
            log.info("closed a connection from %s: no complete request head within %.0f s",
                     self.peername, self._limits.header_timeout_s)
            self.force_close()

    def _watch_body(self, body: StreamReader) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body, self._body_data_seen = body, False
        self._body_timer = self._loop.call_later(self._limits.body_timeout_s, self._check_body)

    def _check_body(self) -> None:
        """Every body_timeout_s while a body is incomplete: close if nothing came since the last look
        (unless we stopped reading ourselves, because the handler is not consuming yet)."""
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            self._body = None
            return
        if self._body_data_seen or self._reading_paused or self._buffer_paused:
            self._body_data_seen = False
            self._body_timer = self._loop.call_later(self._limits.body_timeout_s, self._check_body)
            return
        log.info("closed a connection from %s: request body stalled for %.0f s", self.peername,
                 self._limits.body_timeout_s)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = None
        super().connection_lost(exc)

    # ---- errors aiohttp answers itself ----------------------------------------------------

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send the error")
        if isinstance(exc, ConnectionError):
            # Never sent: the connection is gone. 408 is what the access log shows for it.
            log.debug("connection lost during %s %s", request.method, request.path)
            response = error_response(408, "M_UNKNOWN", "Connection closed before the request was read")
        elif isinstance(exc, LineTooLong):
            line = bytes(exc.args[0]) if exc.args and isinstance(exc.args[0], (bytes, bytearray)) else b""
            if line.startswith((b"/", b"http:", b"https:")):  # the request target, not a header
                response = error_response(414, "M_TOO_LARGE", "Request URI is too long")
            else:
                response = error_response(431, "M_TOO_LARGE", "Request header is too large")
        elif status == 500:
            rid = request_id(request)
            log.error("unhandled error in %s %s (request %s)", request.method, request.path, rid, exc_info=exc)
            response = error_response(500, "M_UNKNOWN", f"Internal server error (request {rid})")
        elif status == 413:
            response = error_response(413, "M_TOO_LARGE", "Request is too large")
        else:
            log.debug("bad HTTP request from %s: %s", request.remote, exc)
            response = error_response(status, "M_UNKNOWN", f"Bad HTTP request: {message or exc or status}")
        response.force_close()
        return response


class MatrixServer(web.Server):
    """aiohttp's low-level server, making MatrixRequestHandler connections."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, request_factory: Any, handler_cancellation: bool,
                 loop: asyncio.AbstractEventLoop, **handler_kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory, handler_cancellation=handler_cancellation,
                         loop=loop, **handler_kwargs)
        self._limits = limits
        self._handler_kwargs = handler_kwargs

    def __call__(self) -> MatrixRequestHandler:
        return MatrixRequestHandler(self, loop=self._loop, limits=self._limits, **self._handler_kwargs)


class MatrixAppRunner(web.AppRunner):
    """An AppRunner for either listener: MatrixRequestHandler connections, the access log."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        self._handler_kwargs: dict[str, Any] = {
            "keepalive_timeout": KEEPALIVE_TIMEOUT_S,
            "access_log": access_logger if limits.access_log else None,
            "access_log_class": AccessLogger}
        super().__init__(app, **kwargs, **self._handler_kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup
        return MatrixServer(plain.request_handler, request_factory=plain.request_factory,
                            handler_cancellation=plain.handler_cancellation, loop=asyncio.get_running_loop(),
                            limits=self._limits, **self._handler_kwargs)


async def serve_app(app: web.Application, config: Config) -> None:
    """Run the client listener until SIGINT/SIGTERM (web.GracefulExit), then clean up."""
    runner = MatrixAppRunner(app, ConnectionLimits.from_config(config), handle_signals=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.listen.host, config.listen.port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
