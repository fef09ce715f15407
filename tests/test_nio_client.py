"""matrix-nio against the real server process, started the way `make run` starts it.

The server runs as a subprocess (`python -m homeserver --config <copy of
config.sample.yaml>`) with its settings overridden through WHISPR_* environment
variables, on SQLite and, when WHISPR_TEST_POSTGRES / WHISPR_TEST_REDIS are set,
on PostgreSQL + Redis.

The helpers below (free_port, server_env, start_server, wait_until_up,
stop_process, ...) are shared with tests/test_cli.py and tests/test_make_run.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import aiohttp
import nio
import pytest

from tests.conftest import POSTGRES_URL, REDIS_URL, fresh_postgres_database, need

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = REPO / "config.sample.yaml"
STARTUP_TIMEOUT_S = 30.0
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(port: int, data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server subprocess: ours minus any stray WHISPR_ settings, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPR_") or k.startswith("WHISPR_TEST_")}
    env.update({
        "WHISPR_LISTEN__PORT": str(port),
        "WHISPR_DATA_DIR": str(data_dir),
        "WHISPR_PUBLIC_BASEURL": f"http://127.0.0.1:{port}",
        # cheap password hashing keeps the tests fast
        "WHISPR_PASSWORDS__ARGON2_OPSLIMIT": "1",
        "WHISPR_PASSWORDS__ARGON2_MEMLIMIT_KIB": "8",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def read_log(log_path: Path, limit: int = 20000) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "<no output>"
    return text[-limit:] or "<no output>"


async def wait_until_up(base_url: str, proc: subprocess.Popen[Any], log_path: Path,
                        timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll GET /_matrix/client/versions until it answers 200; fail with the server's output otherwise."""
    deadline = time.monotonic() + timeout
    last_error: object = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited with code {proc.returncode} before answering /versions; "
                            f"output:\n{read_log(log_path)}")
            try:
                async with session.get(f"{base_url}/_matrix/client/versions") as resp:
                    if resp.status == 200 and "versions" in await resp.json():
                        return
                    last_error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                last_error = e
            await asyncio.sleep(0.1)
    pytest.fail(f"server did not answer /versions within {timeout}s (last: {last_error!r}); "
                f"output:\n{read_log(log_path)}")


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM the process group (graceful aiohttp shutdown), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.asynccontextmanager
async def start_server(config_path: Path, env: dict[str, str], log_path: Path,
                       cwd: Path | None = None) -> AsyncIterator[str]:
    """Run `python -m homeserver --config FILE` until the block ends; yields its base URL."""
    port = int(env["WHISPR_LISTEN__PORT"]) if "WHISPR_LISTEN__PORT" in env else None
    assert port is not None, "start_server needs WHISPR_LISTEN__PORT in env"
    base_url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "--config", str(config_path)],
            cwd=str(cwd or log_path.parent), env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await wait_until_up(base_url, proc, log_path)
        yield base_url
    finally:
        stop_process(proc)


def copy_sample_config(dest_dir: Path) -> Path:
    path = dest_dir / "homeserver.yaml"
    shutil.copyfile(SAMPLE_CONFIG, path)
    return path


async def http_register(base_url: str, username: str, password: str = PASSWORD) -> dict[str, Any]:
    """Register over plain HTTP with the two-step m.login.dummy UIA."""
    url = f"{base_url}/_matrix/client/v3/register"
    body = {"username": username, "password": password}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as first:
            assert first.status == 401, await first.text()
            uia = await first.json()
        async with session.post(url, json={**body, "auth": {"type": "m.login.dummy",
                                                             "session": uia["session"]}}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def http_login(base_url: str, username: str, password: str = PASSWORD) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": username},
                "password": password}) as resp:
            return resp.status, await resp.json()


# --- the nio story -------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres+redis"])
async def backend_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """Extra WHISPR_* variables selecting the storage engine (and Redis) of the server process."""
    if request.param == "sqlite":
        yield {}
        return
    need(POSTGRES_URL, "postgres")
    need(REDIS_URL, "redis")
    url, drop = await fresh_postgres_database()
    try:
        yield {"WHISPR_DATABASE__ENGINE": "postgres", "WHISPR_DATABASE__URL": url,
               "WHISPR_REDIS__URL": REDIS_URL,
               "WHISPR_REDIS__KEY_PREFIX": f"whispr-test-{secrets.token_hex(4)}:"}
    finally:
        await drop()


@pytest.fixture
async def server_url(tmp_path: Path, backend_env: dict[str, str]) -> AsyncIterator[str]:
    config = copy_sample_config(tmp_path)
    env = server_env(free_port(), tmp_path / "data", backend_env)
    async with start_server(config, env, tmp_path / "server.log") as url:
        yield url


async def test_nio_account_story(server_url: str) -> None:
    username = "nio_" + secrets.token_hex(3)
    reg_client = nio.AsyncClient(server_url, username)
    client = nio.AsyncClient(server_url, username)
    stale = nio.AsyncClient(server_url, username)
    try:
        # register: nio sends m.login.dummy straight away (no session); the server must accept it
        reg = await reg_client.register(username, PASSWORD, device_name="nio register")
        assert isinstance(reg, nio.RegisterResponse), reg
        user_id = reg.user_id
        assert user_id.startswith(f"@{username}:")
        assert reg.access_token and reg.device_id

        login = await client.login(PASSWORD, device_name="nio test")
        assert isinstance(login, nio.LoginResponse), login
        assert login.user_id == user_id
        assert login.access_token != reg.access_token
        assert login.device_id != reg.device_id

        who = await client.whoami()
        assert isinstance(who, nio.WhoamiResponse), who
        assert who.user_id == user_id
        assert who.device_id == login.device_id

        assert isinstance(await client.set_displayname("Nio Tester ☃"), nio.ProfileSetDisplayNameResponse)
        name = await client.get_displayname()
        assert isinstance(name, nio.ProfileGetDisplayNameResponse), name
        assert name.displayname == "Nio Tester ☃"
        profile = await client.get_profile(user_id)
        assert isinstance(profile, nio.ProfileGetResponse), profile
        assert profile.displayname == "Nio Tester ☃"
        # another user's view of the profile is the same
        other = await reg_client.get_profile(user_id)
        assert isinstance(other, nio.ProfileGetResponse), other
        assert other.displayname == "Nio Tester ☃"

        old_token = client.access_token
        out = await client.logout()
        assert isinstance(out, nio.LogoutResponse), out

        # the logged-out token is refused ...
        stale.restore_login(user_id, login.device_id, old_token)
        refused = await stale.whoami()
        assert isinstance(refused, nio.WhoamiError), refused
        assert refused.status_code == "M_UNKNOWN_TOKEN"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server_url}/_matrix/client/v3/account/whoami",
                                   headers={"Authorization": f"Bearer {old_token}"}) as resp:
                assert resp.status == 401
                assert (await resp.json())["errcode"] == "M_UNKNOWN_TOKEN"
        # ... while the registration session's token still works
        still = await reg_client.whoami()
        assert isinstance(still, nio.WhoamiResponse), still
        assert still.device_id == reg.device_id

        # a wrong password is refused
        bad = await stale.login("not the password")
        assert isinstance(bad, nio.LoginError), bad
        assert bad.status_code == "M_FORBIDDEN"
    finally:
        await asyncio.gather(reg_client.close(), client.close(), stale.close())


async def test_nio_registration_is_rate_limited(server_url: str) -> None:
    """nio registers in one request (m.login.dummy, no session): that must still count against
    the register bucket of the sample config (burst 5), not slip past the rate limiter."""
    config = nio.AsyncClientConfig(max_limit_exceeded=0, max_timeouts=0)
    outcomes: list[Any] = []
    for i in range(8):
        c = nio.AsyncClient(server_url, f"burst{i}", config=config)
        try:
            outcomes.append(await c.register(f"burst{i}", PASSWORD))
        finally:
            await c.close()
    assert all(isinstance(r, nio.RegisterResponse) for r in outcomes[:5]), outcomes[:5]
    limited = [r for r in outcomes[5:] if isinstance(r, nio.ErrorResponse)]
    assert limited, f"no registration was rate limited: {outcomes}"
    assert all(r.status_code == "M_LIMIT_EXCEEDED" for r in limited), limited
