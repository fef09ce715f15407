"""Fixtures: real databases (SQLite file, PostgreSQL), real Redis, a real SMTP server, the app over HTTP.

PostgreSQL and Redis suites run when WHISPR_TEST_POSTGRES / WHISPR_TEST_REDIS hold
URLs and skip otherwise; with WHISPR_TEST_STRICT=1 (CI) a missing service fails.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller

from homeserver.web.protocol import ConnectionLimits, MatrixAppRunner
from homeserver.app import make_app
from homeserver.config import Config, load_config

POSTGRES_URL = os.environ.get("WHISPR_TEST_POSTGRES", "")
REDIS_URL = os.environ.get("WHISPR_TEST_REDIS", "")
STRICT = os.environ.get("WHISPR_TEST_STRICT") == "1"
SERVER_NAME = "test.local"


def need(url: str, what: str) -> None:
    if url:
        return
    message = f"{what} suite needs WHISPR_TEST_{what.upper()} (a URL); not set"
    if STRICT:
        pytest.fail(message)
    pytest.skip(message)


async def fresh_postgres_database() -> tuple[str, Callable[[], Any]]:
    """A new empty database on the test server; returns its URL and a dropper."""
    name = "whispr_test_" + secrets.token_hex(6)
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = re.sub(r"/[^/?]*(\?|$)", f"/{name}\\1", POSTGRES_URL.split("://", 1)[1], count=1)
    url = POSTGRES_URL.split("://", 1)[0] + "://" + url

    async def drop() -> None:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    return url, drop


@dataclass
class Mailbox:
    """What the aiosmtpd server received."""

    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def last_to(self, address: str) -> Message:
        for msg in reversed(self.messages):
            if msg["To"] == address:
                return msg
        raise AssertionError(f"no mail to {address}; got {[m['To'] for m in self.messages]}")

    def body(self, msg: Message) -> str:
        payload = msg.get_payload(decode=True)
        return payload.decode() if isinstance(payload, bytes) else str(msg.get_payload())

    def code_for(self, address: str) -> str:
        match = re.search(r"code is: (\d{6})", self.body(self.last_to(address)))
        assert match, "no code in the mail"
        return match.group(1)

    def link_for(self, address: str) -> str:
        match = re.search(r"(http\S+validate\?\S+)", self.body(self.last_to(address)))
        assert match, "no link in the mail"
        return match.group(1)


class _EphemeralPortController(Controller):
    """aiosmtpd checks it is up by connecting to `port`: use the port the kernel picked for 0."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp() -> Any:
    """A real SMTP server (aiosmtpd) on a free loopback port, collecting what it receives."""
    mailbox = Mailbox()
    controller = _EphemeralPortController(mailbox, hostname="127.0.0.1", port=0)
    controller.start()
    mailbox.port = controller.port  # type: ignore[attr-defined]
    yield mailbox
    controller.stop()


def base_overrides(tmp_path: Path, smtp_port: int | None = None) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "public_baseurl": "http://127.0.0.1:1",
        "data_dir": str(tmp_path / "data"),
        "passwords": {"argon2_opslimit": 1, "argon2_memlimit_kib": 8},
        "rate_limits": {"enabled": False},
        # Federation has its own tests with real listeners; most tests need no TLS port.
        "federation": {"enabled": False},
    }
    if smtp_port is not None:
        overrides["mail"] = {"smtp_host": "127.0.0.1", "smtp_port": smtp_port}
    return overrides


@pytest.fixture(params=["sqlite", "postgres+redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """Config overrides selecting the storage engine and ephemeral store under test."""
    if request.param == "sqlite":
        yield {"database": {"engine": "sqlite"}}
        return
    need(POSTGRES_URL, "postgres")
    need(REDIS_URL, "redis")
    url, drop = await fresh_postgres_database()
    try:
        yield {"database": {"engine": "postgres", "url": url},
               "redis": {"url": REDIS_URL, "key_prefix": f"whispr-test-{secrets.token_hex(4)}:"}}
    finally:
        await drop()


@pytest.fixture
def make_config(tmp_path: Path, backend: dict[str, Any]) -> Callable[..., Config]:
    def build(**overrides: Any) -> Config:
        merged = base_overrides(tmp_path, overrides.pop("smtp_port", None))
        for source in (backend, overrides):
            for k, v in source.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                else:
                    merged[k] = v
        return load_config(None, environ={}, overrides=merged)
    return build


class WhisprTestServer(TestServer):
    """aiohttp's TestServer with the connections both listeners use (homeserver.web.protocol)."""

    def __init__(self, app: Any, config: Config) -> None:
        super().__init__(app)
        self.config = config

    async def _make_runner(self, **kwargs: Any) -> MatrixAppRunner:
        return MatrixAppRunner(self.app, ConnectionLimits.from_config(self.config), **kwargs)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_args(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Arguments of `storage.open_database` for a new, empty database of each engine."""
    if request.param == "sqlite":
        yield {"engine": "sqlite", "path": str(tmp_path / "store.db")}
        return
    need(POSTGRES_URL, "postgres")
    url, drop = await fresh_postgres_database()
    try:
        yield {"engine": "postgres", "url": url}
    finally:
        await drop()


@pytest.fixture
def serve(aiohttp_client: Any, make_config: Callable[..., Config]) -> Callable[..., Any]:
    """Start the real app on a loopback port; returns an aiohttp TestClient."""
    async def start(**overrides: Any) -> Any:
        config = make_config(**overrides)
        return await aiohttp_client(WhisprTestServer(make_app(config), config))
    return start


@pytest.fixture
async def client(serve: Callable[..., Any]) -> Any:
    return await serve()


async def register(client: Any, username: str, password: str = "correct horse", **extra: Any) -> dict[str, Any]:
    """Register through the standard two-step UIA with m.login.dummy."""
    body = {"username": username, "password": password, **extra}
    first = await client.post("/_matrix/client/v3/register", json=body)
    assert first.status == 401, await first.text()
    session = (await first.json())["session"]
    resp = await client.post("/_matrix/client/v3/register",
                             json={**body, "auth": {"type": "m.login.dummy", "session": session}})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def login(client: Any, username: str, password: str = "correct horse", **extra: Any) -> Any:
    return await client.post("/_matrix/client/v3/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": username},
        "password": password, **extra})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
