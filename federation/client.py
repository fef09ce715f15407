"""Outbound federation requests: server discovery, TLS, the SSRF guard, X-Matrix signing.

Discovery follows the spec's "Resolving server names", simplified:

1. IP literal: that address, the given port or 8448; Host is the server name; the certificate
   must cover the IP (no SNI is sent).
2. Host name with an explicit port: its A/AAAA addresses, that port; Host is the server name;
   SNI and certificate for the host name.
3. Otherwise `GET https://<host>/.well-known/matrix/server` (redirects followed, each hop through
   the SSRF guard; answers cached per Cache-Control, 24 h by default, at most 48 h; failures for
   an hour) gives a delegated name, resolved like 1/2, or without a port on 8448 with Host, SNI
   and certificate of the delegated host.
4. No usable .well-known: the host itself on 8448.

SRV records (`_matrix-fed._tcp`, deprecated `_matrix._tcp`) are not looked up: there is no DNS
library here that does SRV asynchronously, and delegation through .well-known (with a port)
covers the same ground; a server that publishes only SRV is reached on 8448 and fails there.

Every address we would connect to (well-known hops included) is checked: loopback, private,
link-local, shared, reserved, unspecified and multicast addresses are refused unless
`federation.allowed_private_ranges` lists them. We connect to the checked IP itself (the host
name only goes into SNI and the Host header), so DNS cannot swap in another address afterwards.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any, AsyncIterator, Mapping, Sequence
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from signedjson.types import SigningKey
from yarl import URL

from federation.request_auth import ServerName, is_server_name, parse_server_name, sign_request
from homeserver.config import FederationConfig
from homeserver.errors import MatrixError
from homeserver.json_input import parse_json

__all__ = [
    "DestinationRefused", "FederationClient", "FederationClientError", "FederationError",
    "FederationUnreachable", "RawResponse", "ResolvedServer", "ServerName", "build_uri", "parse_server_name",
]

log = logging.getLogger("whispr.federation.client")

DEFAULT_PORT = 8448
WELL_KNOWN_PATH = "/.well-known/matrix/server"
WELL_KNOWN_DEFAULT_TTL_S = 24 * 3600
WELL_KNOWN_MIN_TTL_S = 300
WELL_KNOWN_MAX_TTL_S = 48 * 3600
WELL_KNOWN_ERROR_TTL_S = 3600
WELL_KNOWN_MAX_BYTES = 64 * 1024
WELL_KNOWN_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5


def _version() -> str:
    try:
        return metadata.version("whispr")
    except metadata.PackageNotFoundError:
        return "0.0.0"


USER_AGENT = f"Whispr/{_version()}"


# ---- errors -------------------------------------------------------------------------------------

class FederationClientError(Exception):
    """Base of everything a federation request can fail with."""


class FederationError(FederationClientError):
    """The remote server answered, with an error status (4xx/5xx, or an unfollowed 3xx)."""

    def __init__(self, status: int, errcode: str, body: Any) -> None:
        self.status = status
        self.errcode = errcode
        self.body = body
        self.error = body.get("error", "") if isinstance(body, dict) and isinstance(body.get("error"), str) else ""
        super().__init__(f"{status} {errcode}: {self.error}" if self.error else f"{status} {errcode}")


class FederationUnreachable(FederationClientError):
    """No usable answer: DNS, connection, TLS, timeout, or a response too large or not JSON."""


class DestinationRefused(FederationUnreachable):
    """We will not contact this destination: not a server name, or only forbidden addresses."""


# ---- addresses ----------------------------------------------------------------------------------

_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressGuard:
    """Which IP addresses outbound federation may connect to."""

    def __init__(self, allowed_ranges: Sequence[str] = ()) -> None:
        self._allowed = [ipaddress.ip_network(r, strict=False) for r in allowed_ranges]

    def permitted(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self._allowed if net.version == ip.version):
            return True
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = ip.ipv4_mapped or ip.sixtofour
            if embedded is None and ip in _NAT64:
                embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if embedded is not None:
                return self.permitted(embedded)
        return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                     or ip.is_reserved or ip.is_unspecified)

    async def resolve(self, host: str, port: int) -> list[str]:
        """The permitted addresses of `host` (an IP literal or a DNS name), in resolver order."""
        try:
            candidates: list[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise FederationUnreachable(f"cannot resolve {host}: {e}") from None
            candidates = []
            for info in infos:
                ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if ip not in candidates:
                    candidates.append(ip)
        permitted = [str(ip) for ip in candidates if self.permitted(ip)]
        if not permitted:
            shown = ", ".join(map(str, candidates)) or "nothing"
            raise DestinationRefused(f"{host} resolves to {shown}, which federation may not contact")
        return permitted


def _url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


# ---- URIs ---------------------------------------------------------------------------------------

# RFC 3986 pchar plus "/" and "%" (so callers may pass already-encoded segments).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def _query_value(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def build_uri(path: str, query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None) -> str:
    """The request target as it goes on the wire (and into the X-Matrix signature).

    Characters not allowed in a path are percent-encoded; a `?query` already in `path` is kept
    as given; `query` items are appended with every reserved character encoded. List values
    repeat the key.
    """
    base, sep, existing = path.partition("?")
    if not base.startswith("/"):
        raise ValueError("path must start with /")
    parts = [existing] if sep and existing else []
    items = query.items() if isinstance(query, Mapping) else (query or ())
    for key, value in items:
        for one in value if isinstance(value, (list, tuple)) else (value,):
            parts.append(f"{quote(str(key), safe='')}={quote(_query_value(one), safe='')}")
    return quote(base, safe=_PATH_SAFE) + ("?" + "&".join(parts) if parts else "")


# ---- discovery ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedServer:
    """Where to connect for a destination, and what to say there."""

    server_name: str
    # The DNS name or IP literal to resolve and connect to (IPv6 without brackets).
    host: str
    port: int
    host_header: str
    # SNI and the name the certificate must match; None for IP literals (the cert must cover the IP).
    tls_server_name: str | None


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream")


def _cache_ttl(headers: Mapping[str, str]) -> int:
    control = headers.get("Cache-Control", "")
    if re.search(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", control):
        return WELL_KNOWN_MIN_TTL_S
    match = re.search(r"max-age\s*=\s*\"?(\d+)", control)
    if match is None:
        return WELL_KNOWN_DEFAULT_TTL_S
    return max(WELL_KNOWN_MIN_TTL_S, min(int(match.group(1)), WELL_KNOWN_MAX_TTL_S))


# ---- the client ---------------------------------------------------------------------------------

class FederationClient:
    """Signed JSON requests to other homeservers, over TLS, through discovery and the SSRF guard.

    `well_known_port` is where `.well-known/matrix/server` is fetched (443 per the spec; tests
    serve it elsewhere).
    """

    def __init__(self, server_name: str, signing_key: SigningKey, config: FederationConfig, *,
                 well_known_port: int = 443) -> None:
        self.server_name = server_name
        self._signing_key = signing_key
        self._config = config
        self._guard = AddressGuard(config.allowed_private_ranges)
        self._well_known_port = well_known_port
        self._well_known: dict[str, tuple[str | None, float]] = {}
        self._well_known_inflight: dict[str, asyncio.Future[str | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ssl = self._ssl_context(config)

    @staticmethod
    def _ssl_context(config: FederationConfig) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if config.tls_ca_file:
            ctx.load_verify_locations(cafile=config.tls_ca_file)
        if not config.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=200, limit_per_host=8, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}, auto_decompress=True,
                timeout=aiohttp.ClientTimeout(total=self._config.request_timeout_s,
                                              sock_connect=self._config.connect_timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            await self.start()
        assert self._session is not None
        return self._session

    # -- discovery --

    async def resolve(self, destination: str) -> ResolvedServer:
        """Where requests for `destination` go (may fetch and cache its .well-known)."""
        try:
            name = parse_server_name(destination)
        except ValueError as e:
            raise DestinationRefused(str(e)) from None
        if name.is_ip:
            return ResolvedServer(destination, name.host, name.port or DEFAULT_PORT, destination, None)
        if name.port is not None:
            return ResolvedServer(destination, name.host, name.port, destination, name.host)
        delegated = await self._delegated_name(name.host)
        if delegated is not None:
            d = parse_server_name(delegated)
            if d.is_ip:
                return ResolvedServer(destination, d.host, d.port or DEFAULT_PORT, delegated, None)
            if d.port is not None:
                return ResolvedServer(destination, d.host, d.port, delegated, d.host)
            # (SRV lookup for _matrix-fed._tcp.<delegated> skipped: see the module docstring.)
            return ResolvedServer(destination, d.host, DEFAULT_PORT, d.host, d.host)
        # (SRV lookup for _matrix-fed._tcp.<host> skipped.)
        return ResolvedServer(destination, name.host, DEFAULT_PORT, name.host, name.host)

    async def _delegated_name(self, host: str) -> str | None:
        cached = self._well_known.get(host)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        pending = self._well_known_inflight.get(host)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_well_known(host))
            self._well_known_inflight[host] = pending
            pending.add_done_callback(lambda _f: self._well_known_inflight.pop(host, None))
        return await asyncio.shield(pending)

    async def _fetch_well_known(self, host: str) -> str | None:
        """The delegated server name from https://host/.well-known/matrix/server, or None; cached."""
        # The server's own host is checked like any destination: a refusal stops here.
        await self._guard.resolve(host, self._well_known_port)
        delegated, ttl = None, WELL_KNOWN_ERROR_TTL_S
        try:
            delegated, ttl = await self._well_known_request(host)
        except DestinationRefused as e:
            log.info("well-known of %s redirects somewhere we may not go: %s", host, e)
        except (FederationClientError, aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            log.info("no usable .well-known/matrix/server for %s: %s", host, e)
        self._well_known[host] = (delegated, time.monotonic() + ttl)
        return delegated

    async def _well_known_request(self, host: str) -> tuple[str | None, int]:
        session = await self._ensure_session()
        url_host, port, path = host, self._well_known_port, WELL_KNOWN_PATH
        for _ in range(MAX_REDIRECTS + 1):
            ips = await self._guard.resolve(url_host, port)
            host_header = url_host if port == 443 else f"{_url_host(url_host)}:{port}"
            server_hostname = None if _is_ip(url_host) else url_host
            url = URL(f"https://{_url_host(ips[0])}:{port}{path}", encoded=True)
            async with session.get(url, headers={"Host": host_header}, server_hostname=server_hostname,
                                   allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=WELL_KNOWN_TIMEOUT_S)) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    here = f"https://{_url_host(url_host)}:{port}{path}"
                    target = urlsplit(urljoin(here, resp.headers["Location"]))
                    if target.scheme != "https" or not target.hostname:
                        return None, WELL_KNOWN_ERROR_TTL_S
                    url_host, port = target.hostname, target.port or 443
                    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
                    continue
                if resp.status != 200:
                    return None, WELL_KNOWN_ERROR_TTL_S
                raw = await _read_capped(resp, WELL_KNOWN_MAX_BYTES)
                ttl = _cache_ttl(resp.headers)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return None, WELL_KNOWN_ERROR_TTL_S
            delegated = body.get("m.server") if isinstance(body, dict) else None
            if not isinstance(delegated, str) or not is_server_name(delegated):
                return None, WELL_KNOWN_ERROR_TTL_S
            return delegated, ttl
        return None, WELL_KNOWN_ERROR_TTL_S

    # -- requests --

    @asynccontextmanager
    async def request(self, method: str, destination: str, path: str, *,
                      query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None, body: Any = None,
                      headers: Mapping[str, str] | None = None, auth: bool = True,
                      timeout: float | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a (signed) request and yield the raw response, whatever its status, for streaming.

        `body` is sent as JSON when not None. Connection problems raise FederationUnreachable;
        reading the body is the caller's business.
        """
        session = await self._ensure_session()
        target = await self.resolve(destination)
        ips = await self._guard.resolve(target.host, target.port)
        uri = build_uri(path, query)
        send_headers = {"Host": target.host_header, **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            send_headers.setdefault("Content-Type", "application/json")
        if auth:
            send_headers["Authorization"] = sign_request(self.server_name, destination, method, uri, body,
                                                         self._signing_key)
        # No timeout argument at all (not None) leaves the session's own timeout in force.
        timeout_arg: dict[str, Any] = {} if timeout is None else {
            "timeout": aiohttp.ClientTimeout(total=timeout, sock_connect=self._config.connect_timeout_s)}
        response: aiohttp.ClientResponse | None = None
        problem = "no address"
        for ip in ips:
            url = URL(f"https://{_url_host(ip)}:{target.port}{uri}", encoded=True)
            try:
                response = await session.request(
                    method, url, data=data, headers=send_headers, server_hostname=target.tls_server_name,
                    allow_redirects=False, **timeout_arg)
                break
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
                problem = f"TLS: {e}"
            except aiohttp.ClientConnectorError as e:
                problem = str(e)
            except asyncio.TimeoutError:
                raise FederationUnreachable(f"{method} {destination}{path}: timed out") from None
            except aiohttp.ClientError as e:
                raise FederationUnreachable(f"{method} {destination}{path}: {e}") from None
        if response is None:
            raise FederationUnreachable(f"cannot connect to {destination} ({target.host}:{target.port}): {problem}")
        try:
            yield response
        finally:
            response.release()

    @asynccontextmanager
    async def fetch_url(self, url: str, *, timeout: float) -> AsyncIterator[aiohttp.ClientResponse]:
        """An unsigned GET of a plain URL (where an origin redirected a media download to),
        through the address guard, with no further redirects."""
        target = urlsplit(url)
        if target.scheme not in ("https", "http") or not target.hostname:
            raise FederationUnreachable(f"cannot fetch {url!r}: not an http(s) URL")
        port = target.port or (443 if target.scheme == "https" else 80)
        ips = await self._guard.resolve(target.hostname, port)
        session = await self._ensure_session()
        default_port = port == (443 if target.scheme == "https" else 80)
        host_header = _url_host(target.hostname) + ("" if default_port else f":{port}")
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        request_url = URL(f"{target.scheme}://{_url_host(ips[0])}:{port}{path}", encoded=True)
        server_hostname = None if _is_ip(target.hostname) or target.scheme == "http" else target.hostname
        hostname_arg: dict[str, Any] = {"server_hostname": server_hostname} if server_hostname else {}
        try:
            response = await session.get(
                request_url, headers={"Host": host_header}, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=self._config.connect_timeout_s),
                **hostname_arg)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise FederationUnreachable(f"GET {url}: {e}") from None
        try:
            yield response
        finally:
            response.release()

    async def _json(self, method: str, destination: str, path: str, query: Any, body: Any, auth: bool,
                    timeout: float | None) -> Any:
        async with self.request(method, destination, path, query=query, body=body, auth=auth,
                                timeout=timeout) as resp:
            try:
                raw = await _read_capped(resp, self._config.max_response_bytes)
            except asyncio.TimeoutError:
                raise FederationUnreachable(f"{method} {destination}{path}: timed out reading the answer") from None
            except aiohttp.ClientError as e:
                raise FederationUnreachable(f"{method} {destination}{path}: {e}") from None
            status = resp.status
        try:  # a peer's answer is hostile input too: bounded like any request body
            parsed = parse_json(raw, safe_integers=False) if raw.strip() else None
        except MatrixError:
            parsed = None
            if 200 <= status < 300:
                raise FederationUnreachable(f"{method} {destination}{path}: the answer is not JSON") from None
        if not 200 <= status < 300:
            errcode = parsed.get("errcode") if isinstance(parsed, dict) else None
            if parsed is None:
                parsed = {"error": raw[:500].decode("utf-8", "replace")}
            raise FederationError(status, errcode if isinstance(errcode, str) else "M_UNKNOWN", parsed)
        return parsed

    async def get_json(self, destination: str, path: str, query: Mapping[str, Any] | None = None, *,
                       auth: bool = True, timeout: float | None = None) -> Any:
        return await self._json("GET", destination, path, query, None, auth, timeout)

    async def put_json(self, destination: str, path: str, body: Any, *, query: Mapping[str, Any] | None = None,
                       timeout: float | None = None) -> Any:
        return await self._json("PUT", destination, path, query, {} if body is None else body, True, timeout)

    async def post_json(self, destination: str, path: str, body: Any, *, query: Mapping[str, Any] | None = None,
                        timeout: float | None = None) -> Any:
        return await self._json("POST", destination, path, query, {} if body is None else body, True, timeout)

    async def get_bytes(self, destination: str, path: str, query: Mapping[str, Any] | None = None, *,
                        max_bytes: int | None = None, timeout: float | None = None,
                        headers: Mapping[str, str] | None = None) -> RawResponse:
        """A signed GET whose body is not JSON (media): raises FederationError on a non-2xx status."""
        limit = self._config.max_response_bytes if max_bytes is None else max_bytes
        async with self.request("GET", destination, path, query=query, headers=headers, timeout=timeout) as resp:
            try:
                raw = await _read_capped(resp, limit)
            except asyncio.TimeoutError:
                raise FederationUnreachable(f"GET {destination}{path}: timed out reading the answer") from None
            except aiohttp.ClientError as e:
                raise FederationUnreachable(f"GET {destination}{path}: {e}") from None
            result = RawResponse(resp.status, resp.headers, raw)
        if not 200 <= result.status < 300:
            try:
                parsed = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                parsed = {"error": raw[:500].decode("utf-8", "replace")}
            errcode = parsed.get("errcode") if isinstance(parsed, dict) else None
            raise FederationError(result.status, errcode if isinstance(errcode, str) else "M_UNKNOWN", parsed)
        return result


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or FederationUnreachable as soon as it exceeds `limit` bytes."""
    length = resp.content_length
    if length is not None and length > limit:
        raise FederationUnreachable(f"answer of {length} bytes is larger than the {limit} accepted")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        buf += chunk
        if len(buf) > limit:
            raise FederationUnreachable(f"answer is larger than the {limit} bytes accepted")
    return bytes(buf)
