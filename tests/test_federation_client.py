"""The federation client: discovery (explicit port, IP literal, .well-known), TLS checks, the SSRF
guard, errors callers can tell apart, response limits. Real HTTPS servers on loopback throughout."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from signedjson.key import generate_signing_key

from federation.client import (AddressGuard, DestinationRefused, FederationClient, FederationError,
                               FederationUnreachable, build_uri)
from tests.test_federation_keys import (Peer, TestPKI, bound_socket, federation_config,  # noqa: F401 (fixtures)
                                        make_sqlite_store, peers, pki, serve_tls)


class Target:
    """An HTTPS app on loopback recording Host headers and SNI names of what reaches it."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.sni: list[str | None] = []
        self.paths: list[str] = []
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self, pki: TestPKI, *names: str, routes: Callable[[web.Application], None]) -> "Target":
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.hosts.append(request.headers.get("Host", ""))
            self.paths.append(request.raw_path)
            return await handler(request)

        app = web.Application(middlewares=[record])
        routes(app)
        ctx = pki.server_context(*names)
        ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)  # type: ignore[assignment]
        self.runner, self.port = await serve_tls(app, ctx)
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def targets(pki: TestPKI) -> AsyncIterator[Callable[..., Awaitable[Target]]]:
    started: list[Target] = []

    async def start(*names: str, routes: Callable[[web.Application], None]) -> Target:
        target = await Target().start(pki, *names, routes=routes)
        started.append(target)
        return target

    yield start
    for target in started:
        await target.close()


@pytest.fixture
async def make_client(tmp_path: Path, pki: TestPKI) -> AsyncIterator[Callable[..., FederationClient]]:
    clients: list[FederationClient] = []

    def make(well_known_port: int = 443, **federation: Any) -> FederationClient:
        config = federation_config(tmp_path, "client.test", pki, **federation)
        client = FederationClient("client.test", generate_signing_key("c"), config.federation,
                                  well_known_port=well_known_port)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def answers(path: str, body: Any = None, status: int = 200, **kwargs: Any) -> Callable[[web.Application], None]:
    async def handler(_request: web.Request) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(body=body, status=status, **kwargs)
        return web.json_response({"ok": True} if body is None else body, status=status, **kwargs)

    return lambda app: app.router.add_route("*", path, handler)


# ---- discovery ----------------------------------------------------------------------------------

async def test_explicit_port_with_host_name(targets: Callable[..., Awaitable[Target]],
                                            make_client: Callable[..., FederationClient]) -> None:
    target = await targets("localhost", routes=answers("/_matrix/x"))
    client = make_client()  # verify_tls on, trusting the test CA
    assert await client.get_json(f"localhost:{target.port}", "/_matrix/x") == {"ok": True}
    assert target.hosts == [f"localhost:{target.port}"]
    assert target.sni == ["localhost"]
    resolved = await client.resolve(f"localhost:{target.port}")
    assert (resolved.host, resolved.port, resolved.tls_server_name) == ("localhost", target.port, "localhost")


async def test_ip_literal_server_name(targets: Callable[..., Awaitable[Target]],
                                      make_client: Callable[..., FederationClient]) -> None:
    target = await targets("127.0.0.1", routes=answers("/_matrix/x"))
    client = make_client()
    await client.get_json(f"127.0.0.1:{target.port}", "/_matrix/x")
    assert target.hosts == [f"127.0.0.1:{target.port}"]
    assert target.sni in ([], [None])  # no SNI for an IP address
    resolved = await client.resolve("127.0.0.1")
    assert (resolved.port, resolved.host_header, resolved.tls_server_name) == (8448, "127.0.0.1", None)
    v6 = await client.resolve("[::1]:8449")
    assert (v6.host, v6.port, v6.host_header) == ("::1", 8449, "[::1]:8449")


async def test_well_known_delegation_is_followed_and_cached(
        targets: Callable[..., Awaitable[Target]], make_client: Callable[..., FederationClient]) -> None:
    server = await targets("localhost", routes=answers("/_matrix/federation/v1/version", {"server": {}}))
    well_known = await targets("localhost", routes=answers(
        "/.well-known/matrix/server", {"m.server": f"localhost:{server.port}"},
        headers={"Cache-Control": "max-age=3600"}))
    client = make_client(well_known_port=well_known.port)
    for _ in range(3):
        assert await client.get_json("localhost", "/_matrix/federation/v1/version") == {"server": {}}
    assert well_known.paths == ["/.well-known/matrix/server"]  # fetched once
    assert well_known.sni == ["localhost"]
    assert server.hosts == [f"localhost:{server.port}"] * 3  # Host is the delegated name
    resolved = await client.resolve("localhost")
    assert (resolved.server_name, resolved.host, resolved.port) == ("localhost", "localhost", server.port)


async def test_well_known_redirects_ip_delegation_and_fallback(
        targets: Callable[..., Awaitable[Target]], make_client: Callable[..., FederationClient]) -> None:
    def routes(app: web.Application) -> None:
        async def moved(_request: web.Request) -> web.Response:
            raise web.HTTPFound("/elsewhere")

        async def elsewhere(_request: web.Request) -> web.Response:
            return web.json_response({"m.server": "127.0.0.1"})

        app.router.add_get("/.well-known/matrix/server", moved)
        app.router.add_get("/elsewhere", elsewhere)

    redirecting = await targets("localhost", routes=routes)
    client = make_client(well_known_port=redirecting.port)
    resolved = await client.resolve("localhost")
    assert (resolved.host, resolved.port, resolved.host_header, resolved.tls_server_name) == \
        ("127.0.0.1", 8448, "127.0.0.1", None)
    assert redirecting.paths == ["/.well-known/matrix/server", "/elsewhere"]

    # No .well-known (404), or nonsense in it: the name itself on 8448, and the failure is cached.
    for route in (answers("/other", {}), answers("/.well-known/matrix/server", {"m.server": "not a name!"}),
                  answers("/.well-known/matrix/server", b"<html>", content_type="text/html")):
        broken = await targets("localhost", routes=route)
        client = make_client(well_known_port=broken.port)
        for _ in range(2):
            resolved = await client.resolve("localhost")
            assert (resolved.host, resolved.port, resolved.host_header) == ("localhost", 8448, "localhost")
        assert len(broken.paths) == 1


# ---- the SSRF guard -----------------------------------------------------------------------------

async def test_private_addresses_are_refused_unless_allowed(
        targets: Callable[..., Awaitable[Target]], make_client: Callable[..., FederationClient]) -> None:
    target = await targets("localhost", "127.0.0.1", routes=answers("/.well-known/matrix/server", {
        "m.server": "localhost:1"}))
    client = make_client(well_known_port=target.port, allowed_private_ranges=[])
    for destination in (f"127.0.0.1:{target.port}", f"localhost:{target.port}", "localhost", "[::1]:8448"):
        with pytest.raises(DestinationRefused):
            await client.get_json(destination, "/_matrix/x")
    assert target.paths == []  # nothing reached it, not even the .well-known fetch
    with pytest.raises(FederationUnreachable):  # callers treating "unreachable" alike catch it too
        await client.put_json(f"127.0.0.1:{target.port}", "/_matrix/x", {})
    with pytest.raises(DestinationRefused):
        await client.get_json("not a server name", "/_matrix/x")

    # Allowing 127.0.0.0/8 (as tests and single-machine setups do) lets it through.
    allowed = make_client(allowed_private_ranges=["127.0.0.0/8"])
    await allowed.get_json(f"127.0.0.1:{target.port}", "/.well-known/matrix/server")


@pytest.mark.parametrize("address, permitted", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False),
    ("ff02::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("64:ff9b::7f00:1", False),
    ("2002:7f00:1::", False), ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("::ffff:8.8.8.8", True),
])
def test_address_guard_ranges(address: str, permitted: bool) -> None:
    # Only classification: nothing connects to these addresses.
    assert AddressGuard([]).permitted(ipaddress.ip_address(address)) is permitted


def test_address_guard_allow_list() -> None:
    guard = AddressGuard(["127.0.0.0/8", "fd00::/8"])
    assert guard.permitted(ipaddress.ip_address("127.0.0.5"))
    assert guard.permitted(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert guard.permitted(ipaddress.ip_address("fd12::1"))
    assert not guard.permitted(ipaddress.ip_address("10.0.0.1"))


# ---- TLS ----------------------------------------------------------------------------------------

async def test_certificates_are_checked(targets: Callable[..., Awaitable[Target]], tmp_path: Path,
                                        make_client: Callable[..., FederationClient]) -> None:
    wrong_name = await targets("other.test", routes=answers("/_matrix/x"))
    checked = make_client()
    with pytest.raises(FederationUnreachable, match="TLS"):
        await checked.get_json(f"localhost:{wrong_name.port}", "/_matrix/x")
    untrusted = make_client(tls_ca_file="")  # the system CAs only: the test CA is unknown
    right_name = await targets("localhost", routes=answers("/_matrix/x"))
    with pytest.raises(FederationUnreachable, match="TLS"):
        await untrusted.get_json(f"localhost:{right_name.port}", "/_matrix/x")
    # verify_tls: false (tests, closed networks) accepts both
    lax = make_client(tls_ca_file="", verify_tls=False)
    assert await lax.get_json(f"localhost:{wrong_name.port}", "/_matrix/x") == {"ok": True}
    assert await lax.get_json(f"localhost:{right_name.port}", "/_matrix/x") == {"ok": True}
    assert wrong_name.paths == ["/_matrix/x"] and right_name.paths == ["/_matrix/x"]


# ---- errors and limits --------------------------------------------------------------------------

async def test_errors_callers_can_tell_apart(targets: Callable[..., Awaitable[Target]],
                                             make_client: Callable[..., FederationClient]) -> None:
    def routes(app: web.Application) -> None:
        answers("/missing", {"errcode": "M_NOT_FOUND", "error": "no such thing"}, status=404)(app)
        answers("/broken", b"oops", status=500)(app)
        answers("/forbidden", {"errcode": "M_FORBIDDEN", "error": "go away"}, status=403)(app)
        answers("/html", b"<html>", content_type="text/html")(app)
        answers("/big", b"x" * 70_000, content_type="application/json")(app)
        answers("/bytes", b"\x89PNG...", content_type="image/png")(app)

        async def slow(_request: web.Request) -> web.Response:
            await asyncio.sleep(2)
            return web.json_response({})

        app.router.add_get("/slow", slow)

        async def moved(_request: web.Request) -> web.Response:
            raise web.HTTPFound("/missing")

        app.router.add_get("/moved", moved)

    target = await targets("localhost", routes=routes)
    client = make_client(max_response_bytes=65536)
    dest = f"localhost:{target.port}"
    with pytest.raises(FederationError) as missing:
        await client.get_json(dest, "/missing")
    assert (missing.value.status, missing.value.errcode, missing.value.error) == (404, "M_NOT_FOUND", "no such thing")
    with pytest.raises(FederationError) as broken:
        await client.post_json(dest, "/broken", {"a": 1})
    assert (broken.value.status, broken.value.errcode) == (500, "M_UNKNOWN") and "oops" in str(broken.value.body)
    with pytest.raises(FederationError) as forbidden:
        await client.put_json(dest, "/forbidden", {})
    assert forbidden.value.errcode == "M_FORBIDDEN" and not isinstance(forbidden.value, FederationUnreachable)
    with pytest.raises(FederationError) as moved:  # redirects are not followed for API requests
        await client.get_json(dest, "/moved")
    assert moved.value.status == 302
    with pytest.raises(FederationUnreachable, match="not JSON"):
        await client.get_json(dest, "/html")
    with pytest.raises(FederationUnreachable, match="larger"):
        await client.get_json(dest, "/big")
    with pytest.raises(FederationUnreachable, match="timed out"):
        await client.get_json(dest, "/slow", timeout=0.3)
    closed = bound_socket()
    try:
        with pytest.raises(FederationUnreachable, match="cannot connect") as refused:
            await client.get_json(f"localhost:{closed.getsockname()[1]}", "/x")
        assert not isinstance(refused.value, DestinationRefused)
    finally:
        closed.close()

    raw = await client.get_bytes(dest, "/bytes")
    assert (raw.status, raw.body, raw.content_type) == (200, b"\x89PNG...", "image/png")
    with pytest.raises(FederationUnreachable, match="larger"):
        await client.get_bytes(dest, "/bytes", max_bytes=3)
    async with client.request("GET", dest, "/bytes") as resp:  # streaming, any status
        assert resp.status == 200 and await resp.content.read(4) == b"\x89PNG"
    async with client.request("GET", dest, "/missing") as resp:
        assert resp.status == 404


async def test_requests_are_signed_for_the_server_name_not_the_delegate(
        peers: Callable[..., Awaitable[Peer]], targets: Callable[..., Awaitable[Target]]) -> None:
    """The X-Matrix destination is the name asked for; the signed uri is what went on the wire."""
    receiver = await peers()
    sender = await peers()
    got = await sender.client.get_json(receiver.server_name, "/_matrix/federation/v1/test/a b/ü",
                                       {"q": "x y", "list": ["1", "2"]})
    assert got["origin"] == sender.server_name
    assert got["uri"] == build_uri("/_matrix/federation/v1/test/a b/ü", {"q": "x y", "list": ["1", "2"]})
    assert got["uri"] == "/_matrix/federation/v1/test/a%20b/%C3%BC?q=x%20y&list=1&list=2"
    assert got["path"] == "/_matrix/federation/v1/test/a b/ü"


def test_build_uri() -> None:
    assert build_uri("/_matrix/federation/v1/make_join/!r:a.test/@u:b.test", {"ver": ["10", "11"]}) == \
        "/_matrix/federation/v1/make_join/!r:a.test/@u:b.test?ver=10&ver=11"
    assert build_uri("/p?already=encoded%20x", {"b": True}) == "/p?already=encoded%20x&b=true"
    assert build_uri("/p/%24event") == "/p/%24event"
    assert build_uri("/a#b", {"alias": "#room:server"}) == "/a%23b?alias=%23room%3Aserver"
    with pytest.raises(ValueError):
        build_uri("no-slash")


async def test_client_works_without_explicit_start_and_restarts(
        targets: Callable[..., Awaitable[Target]], make_client: Callable[..., FederationClient]) -> None:
    target = await targets("localhost", routes=answers("/_matrix/x"))
    client = make_client()
    await client.get_json(f"localhost:{target.port}", "/_matrix/x")
    await client.close()
    await client.start()
    await client.get_json(f"localhost:{target.port}", "/_matrix/x")
    assert len(target.paths) == 2


async def test_hostile_answers_are_not_json(targets: Callable[..., Awaitable[Target]],
                                            make_client: Callable[..., FederationClient]) -> None:
    """A peer's answer goes through the same JSON bounds as a request body (homeserver.json_input)."""
    def routes(app: web.Application) -> None:
        answers("/deep", b"[" * 100_000, content_type="application/json")(app)
        answers("/surrogate", b'{"a": "\\ud800"}', content_type="application/json")(app)

    target = await targets("localhost", routes=routes)
    client = make_client()
    for path in ("/deep", "/surrogate"):
        with pytest.raises(FederationUnreachable, match="not JSON"):
            await client.get_json(f"localhost:{target.port}", path)
