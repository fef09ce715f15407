"""The admin command line, run as an operator would (`python -m homeserver ...` subprocesses) on both
engines: bootstrap the first admin of a server that has none, list accounts, reset a password,
deactivate, make registration tokens; the server they act on is a real one over HTTP."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from tests.test_cli import cli
from tests.test_nio_client import (PASSWORD, backend_env, copy_sample_config, free_port,  # noqa: F401 (fixture)
                                   http_login, http_register, server_env, start_server)

SERVER = "localhost:8448"  # the sample config's server name


def uid(localpart: str) -> str:
    return f"@{localpart}:{SERVER}"


async def get(url: str, token: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()


def run(config: Path, env: dict[str, str], *args: str) -> Any:
    return cli(args[0], "--config", str(config), *args[1:], env=env, cwd=config.parent)


async def test_first_admin_from_the_command_line(tmp_path: Path, backend_env: dict[str, str]) -> None:  # noqa: F811
    config = copy_sample_config(tmp_path)
    env = server_env(free_port(), tmp_path / "data", backend_env)
    done = run(config, env, "register-user", "--user", "alice", "--password", PASSWORD)
    assert done.returncode == 0, done.stderr
    done = run(config, env, "register-user", "--user", "root", "--password", PASSWORD, "--admin")
    assert done.returncode == 0 and "registered @root:localhost:8448 (server admin)" in done.stdout, done.stderr

    async with start_server(config, env, tmp_path / "server.log") as url:
        await http_register(url, "bob")
        status, alice = await http_login(url, "alice")
        assert status == 200, alice
        users_url = f"{url}/_synapse/admin/v2/users"
        status, body = await get(users_url, alice["access_token"])
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"

        # while the server runs: the flag is read from the database on each request
        done = run(config, env, "make-admin", "alice")
        assert done.returncode == 0 and f"{uid('alice')} is now a server admin" in done.stdout, done.stderr
        status, body = await get(users_url, alice["access_token"])
        assert status == 200, body
        assert [u["name"] for u in body["users"]] == [uid("alice"), uid("bob"), uid("root")]

        listed = run(config, env, "list-users")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split("\t") == ["user_id", "admin", "state", "displayname"]
        assert lines[1:] == [f"{uid('alice')}\tadmin\tactive\talice", f"{uid('bob')}\t-\tactive\tbob",
                             f"{uid('root')}\tadmin\tactive\troot"]

        done = run(config, env, "make-admin", "--revoke", uid("alice"))
        assert done.returncode == 0 and "no longer" in done.stdout, done.stderr
        status, _ = await get(users_url, alice["access_token"])
        assert status == 403

        token = run(config, env, "create-registration-token", "--uses", "2")
        assert token.returncode == 0, token.stderr
        value = token.stdout.strip()
        assert len(value) == 16 and value.isalnum()
        named = run(config, env, "create-registration-token", "--token", "welcome")
        assert named.returncode == 0 and named.stdout.strip() == "welcome", named.stderr
        status, body = await get(f"{url}/_synapse/admin/v1/registration_tokens/{value}", alice["access_token"])
        assert status == 403
        _, root = await http_login(url, "root")
        status, body = await get(f"{url}/_synapse/admin/v1/registration_tokens/{value}", root["access_token"])
        assert status == 200 and body["uses_allowed"] == 2 and body["completed"] == 0, body

    # errors: a Matrix error and exit code 1
    for args in (("make-admin", "nobody"), ("make-admin", "@x:elsewhere.org"), ("deactivate-user", "nobody"),
                 ("reset-password", "nobody", "--password", "long enough"),
                 ("reset-password", "bob", "--password", "short"),
                 ("create-registration-token", "--token", "welcome"), ("create-registration-token", "--uses", "-1")):
        done = run(config, env, *args)
        assert done.returncode == 1 and done.stderr.startswith("error: M_"), (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


async def test_reset_password_and_deactivate_from_the_command_line(tmp_path: Path,
                                                                    backend_env: dict[str, str]) -> None:  # noqa: F811
    config = copy_sample_config(tmp_path)
    env = server_env(free_port(), tmp_path / "data", backend_env)
    for name in ("bob", "carol"):
        assert run(config, env, "register-user", "--user", name, "--password", PASSWORD).returncode == 0

    done = run(config, env, "reset-password", "bob", "--password", "a new password")
    assert done.returncode == 0 and f"password of {uid('bob')} reset" in done.stdout, done.stderr
    done = run(config, env, "deactivate-user", "carol", "--erase")
    assert done.returncode == 0 and f"deactivated {uid('carol')} and erased its profile" in done.stdout, done.stderr
    listed = run(config, env, "list-users")
    assert uid("carol") not in listed.stdout
    listed = run(config, env, "list-users", "--deactivated")
    assert f"{uid('carol')}\t-\tdeactivated\t" in listed.stdout

    async with start_server(config, env, tmp_path / "server.log") as url:
        status, _ = await http_login(url, "bob")
        assert status == 403
        status, _ = await http_login(url, "bob", "a new password")
        assert status == 200
        status, body = await http_login(url, "carol")
        assert status == 403 and body["errcode"] == "M_USER_DEACTIVATED"


async def test_shared_secret_from_the_environment(tmp_path: Path) -> None:
    """WHISPR_REGISTRATION_SHARED_SECRET sets the top-level key, as a container's environment would."""
    config = copy_sample_config(tmp_path)
    env = server_env(free_port(), tmp_path / "data", {"WHISPR_REGISTRATION_SHARED_SECRET": "from the env"})
    async with start_server(config, env, tmp_path / "server.log") as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/_synapse/admin/v1/register") as resp:
            nonce = (await resp.json())["nonce"]
        mac = hmac.new(b"from the env", b"\x00".join([nonce.encode(), b"ops", PASSWORD.encode(), b"admin"]),
                       hashlib.sha1).hexdigest()
        async with session.post(f"{url}/_synapse/admin/v1/register", json={
                "nonce": nonce, "username": "ops", "password": PASSWORD, "admin": True, "mac": mac}) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["access_token"]
        status, body = await get(f"{url}/_synapse/admin/v2/users/{quote(uid('ops'))}", token)
        assert status == 200 and body["admin"] is True
