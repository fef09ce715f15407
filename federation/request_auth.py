"""X-Matrix request authentication (Server-Server API, "Request Authentication").

The sender signs ``{method, uri, origin, destination[, content]}`` (canonical JSON, ed25519)
and sends ``Authorization: X-Matrix origin="...",destination="...",key="ed25519:...",sig="..."``.
``uri`` is the request target exactly as sent: path and query string, still percent-encoded.
The receiver rebuilds the same object from what it received and checks the signature with the
origin's key (fetched and cached by the KeyRing).

The server-name grammar lives here too (the client re-exports it): both sides need it, and the
client imports this module.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from signedjson.sign import sign_json
from signedjson.types import SigningKey

from homeserver.clock import now_ms
from homeserver.errors import MatrixError
from homeserver.json_input import parse_json

if TYPE_CHECKING:
    from aiohttp import web

    from federation.keys import KeyRing

# ---- server names (appendices, "Server Name") ---------------------------------------------------

_SERVER_NAME = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]{2,45})\]|(?P<host>[A-Za-z0-9.\-]{1,255}))(?::(?P<port>[0-9]{1,5}))?$")
_IPV4 = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$")


@dataclass(frozen=True)
class ServerName:
    # The host without brackets: a DNS name, an IPv4 literal, or an IPv6 literal.
    host: str
    port: int | None
    is_ip: bool


def parse_server_name(name: str) -> ServerName:
    """Split `hostname[:port]` per the spec's grammar; ValueError if it is not a server name."""
    match = _SERVER_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"not a server name: {name!r}")
    port = int(match["port"]) if match["port"] is not None else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in server name {name!r}")
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            raise ValueError(f"bad IPv6 literal in server name {name!r}") from None
        return ServerName(match["ipv6"], port, True)
    host = match["host"]
    if _IPV4.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"bad IPv4 literal in server name {name!r}") from None
        return ServerName(host, port, True)
    if host.startswith(".") or host.endswith(".") or ".." in host:
        raise ValueError(f"bad host name in server name {name!r}")
    return ServerName(host, port, False)


def is_server_name(name: Any) -> bool:
    try:
        parse_server_name(name)
    except ValueError:
        return False
    return True


# ---- signing ------------------------------------------------------------------------------------

def request_json(origin: str, destination: str, method: str, uri: str, content: Any | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"method": method.upper(), "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(origin: str, destination: str, method: str, uri: str, content: Any | None,
                 signing_key: SigningKey) -> str:
    """The `Authorization` header value for a request to `destination`.

    `uri` is the path and query exactly as they go on the wire; `content` the JSON body
    (None for requests without one).
    """
    signed = sign_json(request_json(origin, destination, method, uri, content), origin, signing_key)
    key = f"{signing_key.alg}:{signing_key.version}"
    sig = signed["signatures"][origin][key]
    return f'X-Matrix origin="{origin}",destination="{destination}",key="{key}",sig="{sig}"'


# ---- parsing ------------------------------------------------------------------------------------

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_x_matrix(header: str) -> dict[str, str]:
    """The parameters of an `X-Matrix` Authorization header (names lower-cased).

    RFC 9110 auth-params: the scheme, one or more spaces, then comma-separated name=value pairs
    with optional spaces/tabs around the commas; values are tokens or quoted strings with
    backslash escapes. Unquoted values may contain colons (older senders) and, leniently, any
    other character but whitespace, commas, quotes and backslashes. ValueError otherwise.
    """
    scheme, sep, rest = header.partition(" ")
    if scheme.lower() != "x-matrix" or not sep:
        raise ValueError("not an X-Matrix authorization")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and rest[i] in _TOKEN_CHARS:
            i += 1
        name = rest[start:i].lower()
        while i < n and rest[i] in " \t":
            i += 1
        if not name or i >= n or rest[i] != "=":
            raise ValueError("expected name=value")
        i += 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted value")
                c = rest[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise ValueError("dangling backslash")
                    chars.append(rest[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            value = "".join(chars)
        else:
            start = i
            # Tokens, plus colons (older senders) and, leniently, anything else up to a separator
            # (unquoted base64 signatures carry "+" and "/").
            while i < n and rest[i] not in ' \t,"\\':
                i += 1
            value = rest[start:i]
            if not value:
                raise ValueError(f"empty value for {name}")
        if name in params:
            raise ValueError(f"repeated parameter {name}")
        params[name] = value
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        if rest[i] != ",":
            raise ValueError("expected a comma between parameters")
        i += 1
    return params


# ---- verifying ----------------------------------------------------------------------------------

def _unauthorized(error: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", error)


async def authenticate_request(request: "web.Request", keyring: "KeyRing", our_server_name: str) -> str:
    """Verify the request's X-Matrix signature; return the origin server name.

    Raises MatrixError 401 M_UNAUTHORIZED when the header is missing or malformed, names
    another destination, or the signature does not verify with the origin's key; 400
    M_NOT_JSON / M_BAD_JSON when a body is present but not JSON we take (homeserver.json_input).
    The body is read here (aiohttp keeps it, so handlers can read it again).
    """
    from federation.keys import KeyUnavailable, SignatureError

    headers = [h for h in request.headers.getall("Authorization", []) if h[:9].lower() == "x-matrix "]
    if not headers:
        raise _unauthorized("Missing X-Matrix Authorization header")
    raw = await request.read()
    content: Any | None = None
    if raw.strip():
        content = parse_json(raw, safe_integers=False)  # bounded before anything walks it
    uri = request.raw_path  # path and query exactly as received, still percent-encoded
    # Every header must be well-formed, for us, and from the same origin before any is checked.
    candidates: list[tuple[str, str, str]] = []
    for header in headers:
        try:
            params = parse_x_matrix(header)
        except ValueError as e:
            raise _unauthorized(f"Malformed X-Matrix header: {e}") from None
        origin, key, sig = params.get("origin"), params.get("key"), params.get("sig")
        if not origin or not key or not sig:
            raise _unauthorized("X-Matrix header needs origin, key and sig")
        if not is_server_name(origin):
            raise _unauthorized("X-Matrix origin is not a server name")
        if candidates and origin != candidates[0][0]:
            raise _unauthorized("X-Matrix headers name different origins")
        destination = params.get("destination")  # optional for older senders; they signed ours anyway
        if destination is not None and destination != our_server_name:
            raise _unauthorized(f"Request is for {destination}, not for this server")
        candidates.append((origin, key, sig))
    failure = "No valid X-Matrix signature"
    for origin, key, sig in candidates:
        if not key.startswith("ed25519:"):
            failure = f"Unsupported key algorithm in {key}"
            continue
        signed = request_json(origin, our_server_name, request.method, uri, content)
        signed["signatures"] = {origin: {key: sig}}
        try:
            await keyring.verify_json_signature(signed, origin, now_ms())
        except KeyUnavailable as e:
            failure = f"Unknown key {key} of {origin}: {e}"
            continue
        except SignatureError as e:
            failure = f"Bad X-Matrix signature: {e}"
            continue
        return origin
    raise _unauthorized(failure)
