"""The Push Gateway API client: POST /_matrix/push/v1/notify to the URL a pusher gave.

Pusher URLs come from users, so the gateway's host is resolved first and only addresses the
guard permits (no loopback or private ranges unless configured) are connected to, by IP.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from homeserver.push.pushers import GatewayError

MAX_RESPONSE_BYTES = 64 * 1024


class AddressCheck(Protocol):
    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host` it is safe to connect to (none: refused)."""
        ...


class HttpGateway:
    def __init__(self, guard: AddressCheck, timeout_s: float = 30.0) -> None:
        self._guard = guard
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def notify(self, url: str, body: dict[str, Any]) -> list[str]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await self._guard.resolve(host, port)
        if not addresses:
            raise GatewayError(f"{host} resolves to no address push may connect to")
        ip = addresses[0]
        netloc = f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"
        target = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(target, json=body, headers={"Host": parts.netloc},
                                          server_hostname=host if parts.scheme == "https" else None,
                                          allow_redirects=False) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES)
                if resp.status != 200:
                    raise GatewayError(f"HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise GatewayError(str(e) or type(e).__name__) from None
        try:
            rejected = json.loads(raw).get("rejected", [])
        except (ValueError, AttributeError):
            return []
        return [k for k in rejected if isinstance(k, str)] if isinstance(rejected, list) else []
