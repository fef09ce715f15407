"""The federation listener: HTTPS (HTTP/1.1) on the federation port, next to the client listener.

`make_federation_app` serves the version and the key endpoints; the inbound federation API
(`federation.endpoints.setup`) is added to the same app by `start_federation_listener`. TLS comes
from `federation.tls_certificate_path` / `tls_private_key_path` (under data_dir), created
self-signed on first start when both are missing and `tls_self_signed_if_missing` is on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from aiohttp import web

from homeserver.web.json_output import json_response
from homeserver.web.error_middleware import matrix_errors
from homeserver.web.protocol import ConnectionLimits, MatrixAppRunner
from federation.keys import KeyRing
from federation.request_auth import is_server_name, parse_server_name
from homeserver.config import Config, ConfigError
from homeserver.errors import MatrixError, not_found

log = logging.getLogger("whispr.federation.listener")

DEFAULT_FEDERATION_PORT = 8448
MAX_QUERIED_SERVERS = 100
MAX_QUERIED_KEYS = 1000


class FederationState(Protocol):
    """What the federation app needs of the HomeServer."""

    config: Config
    keyring: KeyRing


HS_GETTER: web.AppKey[Callable[[], Any]] = web.AppKey("federation_hs_getter")


def _server_version() -> str:
    try:
        return metadata.version("whispr")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# ---- handlers -----------------------------------------------------------------------------------

def _state(request: web.Request) -> FederationState:
    return request.app[HS_GETTER]()


async def version(_request: web.Request) -> web.Response:
    return json_response({"server": {"name": "Whispr", "version": _server_version()}})


async def key_server(request: web.Request) -> web.Response:
    return json_response(_state(request).keyring.server_keys_body())


def _optional_ts(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def key_query_get(request: web.Request) -> web.Response:
    server_name = request.match_info["server_name"]
    if not is_server_name(server_name):
        raise MatrixError(400, "M_INVALID_PARAM", "Not a server name")
    raw = request.query.get("minimum_valid_until_ts")
    minimum = None
    if raw is not None:
        try:
            minimum = int(raw)
        except ValueError:
            raise MatrixError(400, "M_INVALID_PARAM", "minimum_valid_until_ts must be an integer") from None
    return json_response(await _state(request).keyring.query_keys({server_name: {}}, minimum))


async def key_query_post(request: web.Request) -> web.Response:
    from homeserver.web.requests import json_body

    body = await json_body(request)
    server_keys = body.get("server_keys")
    if not isinstance(server_keys, dict):
        raise MatrixError(400, "M_BAD_JSON", "server_keys must be an object")
    if len(server_keys) > MAX_QUERIED_SERVERS:
        raise MatrixError(400, "M_BAD_JSON", f"At most {MAX_QUERIED_SERVERS} servers per query")
    criteria: dict[str, dict[str, int | None]] = {}
    total = 0
    for server_name, keys in server_keys.items():
        if not isinstance(keys, dict):
            raise MatrixError(400, "M_BAD_JSON", f"server_keys.{server_name} must be an object")
        if not is_server_name(server_name):
            continue  # nothing to say about it
        total += len(keys)
        if total > MAX_QUERIED_KEYS:
            raise MatrixError(400, "M_BAD_JSON", f"At most {MAX_QUERIED_KEYS} key IDs per query")
        criteria[server_name] = {
            key_id: _optional_ts(c.get("minimum_valid_until_ts")) if isinstance(c, dict) else None
            for key_id, c in keys.items()}
    return json_response(await _state(request).keyring.query_keys(criteria))


def make_federation_app(hs_getter: Callable[[], FederationState], *,
                        client_max_size: int = 10 * 1024 * 1024) -> web.Application:
    """The federation port's app: version and key endpoints, Matrix errors for everything else.

    `hs_getter` returns the running HomeServer (anything with `config` and `keyring`); it is
    called per request, so the app can be built before the HomeServer exists.
    """
    app = web.Application(middlewares=[matrix_errors], client_max_size=client_max_size)
    app[HS_GETTER] = hs_getter
    app.router.add_get("/_matrix/federation/v1/version", version)
    app.router.add_get("/_matrix/key/v2/server", key_server)
    # Deprecated form with a key ID, still asked by older servers and tools: the spec has the
    # server answer with all its keys whatever the ID, so it is the same document.
    app.router.add_get("/_matrix/key/v2/server/{key_id}", key_server)
    app.router.add_get("/_matrix/key/v2/query/{server_name}", key_query_get)
    app.router.add_post("/_matrix/key/v2/query", key_query_post)
    return app


# ---- /.well-known/matrix/server (on the client listener) --------------------------------------

async def well_known_server(request: web.Request) -> web.Response:
    """`{"m.server": federation.well_known_server}`, for the client listener."""
    from homeserver.web.requests import hs

    delegated = hs(request).config.federation.well_known_server
    if not delegated:
        raise not_found("No delegation configured")
    return json_response({"m.server": delegated})


def setup_well_known(app: web.Application, config: Config) -> None:
    """Serve /.well-known/matrix/server on `app` when federation.well_known_server is set."""
    if config.federation.well_known_server:
        app.router.add_get("/.well-known/matrix/server", well_known_server)


# ---- TLS ----------------------------------------------------------------------------------------

def tls_paths(config: Config) -> tuple[Path, Path]:
    def under_data(p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else config.data_path / path

    return (under_data(config.federation.tls_certificate_path), under_data(config.federation.tls_private_key_path))


def dev_certificate_names(server_name: str) -> list[str]:
    """What a development certificate covers: the server name's host, plus localhost and loopback."""
    names = [parse_server_name(server_name).host, "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(names))


def generate_self_signed_cert(cert_path: Path, key_path: Path, names: Sequence[str], days: int = 365) -> None:
    """Write a self-signed ECDSA P-256 certificate for `names` (DNS names or IPs) and its key (0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Whispr development")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_tls_files(config: Config) -> tuple[Path, Path]:
    """The certificate and key paths, creating a self-signed pair if both are missing (and allowed)."""
    cert, key = tls_paths(config)
    if cert.exists() and key.exists():
        return cert, key
    if cert.exists() or key.exists():
        missing = key if cert.exists() else cert
        raise ConfigError(f"federation TLS: {missing} is missing (its pair exists)")
    if not config.federation.tls_self_signed_if_missing:
        raise ConfigError(f"federation TLS: {cert} and {key} do not exist")
    generate_self_signed_cert(cert, key, dev_certificate_names(config.server_name))
    log.warning("created a self-signed federation certificate %s for development; other servers must turn "
                "off certificate checks to talk to us. Use a CA-signed certificate in production.", cert)
    return cert, key


def ssl_context(config: Config) -> ssl.SSLContext:
    """The server-side TLS context of the federation listener (HTTP/1.1 only)."""
    cert, key = ensure_tls_files(config)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# ---- starting it --------------------------------------------------------------------------------

def federation_port(config: Config) -> int:
    """federation.listen.port, or the port in server_name, or 8448."""
    if config.federation.listen.port:
        return config.federation.listen.port
    return parse_server_name(config.server_name).port or DEFAULT_FEDERATION_PORT


async def start_federation_listener(hs: FederationState,
                                    *setups: Callable[[web.Application], None]) -> web.AppRunner:
    """Serve the federation app over TLS on federation.listen; returns the runner (`await runner.cleanup()`).

    Each of `setups` adds routes to the app (e.g. `federation.endpoints.setup`); the app also
    carries the HomeServer under `homeserver.web.requests.HS`, so handlers written for the client app's
    `hs(request)` work unchanged.
    """
    from homeserver.web.requests import HS

    config = hs.config
    app = make_federation_app(lambda: hs, client_max_size=config.federation.max_transaction_bytes)
    app[HS] = hs  # type: ignore[misc]  # the HomeServer, typed here as the FederationState it offers
    for setup in setups:
        setup(app)
    context = ssl_context(config)
    runner = MatrixAppRunner(app, ConnectionLimits.from_config(config), handle_signals=False)
    await runner.setup()
    host, port = config.federation.listen.host, federation_port(config)
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("federation listening on https://%s:%d", host, port)
    return runner


def federation_listener_ctx(*setups: Callable[[web.Application], None]
                            ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A `cleanup_ctx` entry for the client app: starts the federation listener once the
    HomeServer is up (append it after the HomeServer's own lifetime), stops it on shutdown."""
    async def listener(app: web.Application) -> AsyncIterator[None]:
        from homeserver.web.requests import HS

        runner = await start_federation_listener(app[HS], *setups)
        try:
            yield
        finally:
            await runner.cleanup()

    return listener
