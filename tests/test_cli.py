"""The command line: generate-config, register-user, config errors, env overrides, restarts.

Everything runs `python -m homeserver ...` as a subprocess, as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from homeserver.config import ConfigError, load_config
from tests.test_nio_client import (PASSWORD, SAMPLE_CONFIG, copy_sample_config, free_port, http_login,
                                   http_register, server_env, start_server)


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPR_") or k.startswith("WHISPR_TEST_")}
    return subprocess.run([sys.executable, "-m", "homeserver", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def generate(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("generate-config", "-o", str(path), *extra, cwd=path.parent)


# --- generate-config ------------------------------------------------------------------------------


def test_generate_config_writes_a_loadable_config_with_fresh_secrets(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for path in (a, b):
        done = generate(path, "--server-name", "chat.example.org", "--data-dir", str(tmp_path / "data"))
        assert done.returncode == 0, done.stderr
        assert f"wrote {path}" in done.stdout
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds a secret
    ca, cb = load_config(a, environ={}), load_config(b, environ={})
    assert ca.server_name == "chat.example.org"
    assert ca.data_dir == str(tmp_path / "data")
    assert ca.secrets.jwt_secret and len(ca.secrets.jwt_secret) >= 32
    assert cb.secrets.jwt_secret and ca.secrets.jwt_secret != cb.secrets.jwt_secret
    # every other setting is at the defaults
    assert ca.database.engine == "sqlite" and ca.listen.port == 8008 and ca.rate_limits.enabled


def test_generate_config_to_stdout(tmp_path: Path) -> None:
    done = cli("generate-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "from-stdout.yaml"
    path.write_text(done.stdout)
    assert load_config(path, environ={}).secrets.jwt_secret
    assert not list(tmp_path.glob("data*")), "generate-config must not create the data dir"


def test_generate_config_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    assert generate(path).returncode == 0
    before = path.read_text()
    again = generate(path)
    assert again.returncode == 1
    assert "exists" in again.stderr and "--force" in again.stderr
    assert path.read_text() == before
    forced = generate(path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_config(path, environ={}).secrets.jwt_secret != yaml.safe_load(before)["secrets"]["jwt_secret"]


# --- register-user --------------------------------------------------------------------------------


async def test_register_user_then_log_in_over_http(tmp_path: Path) -> None:
    config = tmp_path / "homeserver.yaml"
    assert generate(config, "--data-dir", str(tmp_path / "data")).returncode == 0
    env = server_env(free_port(), tmp_path / "data")

    done = cli("register-user", "--config", str(config), "--user", "bob", "--password", PASSWORD,
               "--email", "bob@example.org", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "registered @bob:localhost:8448" in done.stdout

    # the same name again is refused with the Matrix error, exit code 1
    dup = cli("register-user", "--config", str(config), "--user", "bob", "--password", PASSWORD,
              env=env, cwd=tmp_path)
    assert dup.returncode == 1
    assert "M_USER_IN_USE" in dup.stderr
    # so is a too short password
    weak = cli("register-user", "--config", str(config), "--user", "carol", "--password", "short",
               env=env, cwd=tmp_path)
    assert weak.returncode == 1 and "M_WEAK_PASSWORD" in weak.stderr, weak.stderr
    # a name reserved from /register (registration.reserved_localparts) is the operator's to give
    admin = cli("register-user", "--config", str(config), "--user", "admin", "--password", PASSWORD,
                env=env, cwd=tmp_path)
    assert admin.returncode == 0 and "registered @admin:localhost:8448" in admin.stdout, admin.stderr

    async with start_server(config, env, tmp_path / "server.log") as url:
        status, body = await http_login(url, "bob")
        assert status == 200, body
        assert body["user_id"] == "@bob:localhost:8448"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/_matrix/client/v3/account/whoami",
                                   headers={"Authorization": f"Bearer {body['access_token']}"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["user_id"] == "@bob:localhost:8448"
        status, body = await http_login(url, "bob", "wrong password")
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        status, body = await http_login(url, "carol")
        assert status == 403, body


def test_register_user_needs_config(tmp_path: Path) -> None:
    done = cli("register-user", "--user", "bob", "--password", PASSWORD, cwd=tmp_path)
    assert done.returncode == 2
    assert "--config is required" in done.stderr


# --- bad configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "env", "message"), [
    ("bogus_key: 1\n", {}, "unknown key(s): bogus_key"),
    ("listen:\n  host: 127.0.0.1\n  prot: 8008\n", {}, "unknown key(s): listen.prot"),
    ("listen:\n  port: eighty\n", {}, "listen.port: expected an integer"),
    ("registration:\n  enabled: maybe\n", {}, "registration.enabled: expected true or false"),
    ("rate_limits:\n  login: {per_second: fast, burst: 1}\n", {}, "rate_limits.login.per_second: expected a number"),
    ("database:\n  engine: mysql\n", {}, "database.engine: must be one of sqlite, postgres"),
    ("database:\n  engine: postgres\n", {}, "database.url: required when database.engine is postgres"),
    ("listen: 8008\n", {}, "listen: expected a mapping"),
    ("- just\n- a list\n", {}, "top level must be a mapping"),
    ("listen: [unclosed\n", {}, "cannot read"),
    ("server_name: localhost\n", {"WHISPR_LISTEN__PORT": "abc"}, "listen.port: expected an integer"),
], ids=["unknown-key", "unknown-nested-key", "wrong-type-int", "wrong-type-bool", "wrong-type-float",
        "bad-literal", "postgres-without-url", "section-not-mapping", "not-a-mapping", "bad-yaml", "bad-env"])
@pytest.mark.parametrize("command", [(), ("register-user", "--user", "bob", "--password", PASSWORD)],
                         ids=["run", "register-user"])
def test_bad_config_exits_2_with_a_clear_message(tmp_path: Path, text: str, env: dict[str, str], message: str,
                                                 command: tuple[str, ...]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    run_env = server_env(free_port(), tmp_path / "data", env)
    if "listen" in text:  # the port override would replace the bad value under test
        run_env.pop("WHISPR_LISTEN__PORT", None)
    if command:  # the subcommand's own --config
        args = (command[0], "--config", str(config), *command[1:])
    else:
        args = ("--config", str(config))
    done = cli(*args, env=run_env, cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("config error: "), done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists(), "a bad config must not get as far as creating the data dir"


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    done = cli("--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert done.returncode == 2
    assert "config error: cannot read" in done.stderr and "nope.yaml" in done.stderr


def test_sample_config_loads_and_has_no_duplicate_keys() -> None:
    """PyYAML lets a repeated key silently replace the first one; the sample must not rely on that."""

    class StrictLoader(yaml.SafeLoader):
        pass

    def no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = [loader.construct_object(k) for k, _ in node.value]
        dups = sorted({k for k in keys if keys.count(k) > 1})
        assert not dups, f"duplicate keys in {SAMPLE_CONFIG.name}: {dups}"
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicates)
    yaml.load(SAMPLE_CONFIG.read_text(), Loader=StrictLoader)
    config = load_config(SAMPLE_CONFIG, environ={})
    assert config.database.engine == "sqlite" and not config.redis.url
    assert config.rate_limits.enabled and config.rate_limits.register.burst == 5
    assert config.limits.max_request_body_bytes == 1048576


# --- environment overrides ------------------------------------------------------------------------


def test_env_overrides_in_load_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = copy_sample_config(tmp_path)
    environ = {
        "WHISPR_LISTEN__PORT": "9123",
        "WHISPR_SERVER_NAME": "chat.example.org:8448",
        "WHISPR_DATA_DIR": "/srv/whispr",
        "WHISPR_REGISTRATION__ENABLED": "false",
        "WHISPR_LOGIN__EMAIL_OTP": "off",
        "WHISPR_RATE_LIMITS__LOGIN__BURST": "20",
        "WHISPR_RATE_LIMITS__LOGIN__PER_SECOND": "2",
        "WHISPR_DATABASE__ENGINE": "postgres",
        "WHISPR_DATABASE__URL": "postgresql://whispr@db:5432/whispr",
        "WHISPR_REDIS__KEY_PREFIX": "whispr:prod:",   # a trailing colon must not turn it into a mapping
        "WHISPR_MAIL__FROM_ADDRESS": "Whispr <noreply@example.org>",
        # not server settings: ignored
        "WHISPR_TEST_POSTGRES": "postgresql://elsewhere/x",
        "WHISPR_SYNAPSE_PYTHON": "/usr/bin/python3",
        "OTHER_LISTEN__PORT": "1",
    }
    c = load_config(config, environ=environ)
    assert c.listen.port == 9123 and c.listen.host == "127.0.0.1"  # sibling keys stay as in the file
    assert c.server_name == "chat.example.org:8448"
    assert c.data_dir == "/srv/whispr"
    assert c.registration.enabled is False and c.registration.require_email_verification is False
    assert c.login.email_otp == "off"
    assert c.rate_limits.login.burst == 20 and c.rate_limits.login.per_second == 2.0
    assert c.rate_limits.register.burst == 5
    assert (c.database.engine, c.database.url) == ("postgres", "postgresql://whispr@db:5432/whispr")
    assert c.redis.key_prefix == "whispr:prod:"
    assert c.mail.from_address == "Whispr <noreply@example.org>"

    # explicit overrides beat the environment; no environ argument means os.environ
    assert load_config(config, environ=environ, overrides={"listen": {"port": 9999}}).listen.port == 9999
    monkeypatch.setenv("WHISPR_LISTEN__PORT", "9124")
    assert load_config(config).listen.port == 9124
    assert load_config(config, environ={}).listen.port == 8008

    with pytest.raises(ConfigError, match="listen.port: expected an integer"):
        load_config(config, environ={"WHISPR_LISTEN__PORT": "eighty"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(config, environ={"WHISPR_LISTEN__PROT": "1"})
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(config, environ={"WHISPR_LISTEN__PORT__X": "1"})


async def test_env_port_override_takes_effect_on_the_running_server(tmp_path: Path) -> None:
    config = tmp_path / "homeserver.yaml"
    assert generate(config, "--data-dir", str(tmp_path / "data")).returncode == 0
    file_port, env_port = free_port(), free_port()
    text = config.read_text().replace("port: 8008", f"port: {file_port}")
    assert f"port: {file_port}" in text
    config.write_text(text)
    assert load_config(config, environ={}).listen.port == file_port

    async with start_server(config, server_env(env_port, tmp_path / "data"), tmp_path / "server.log") as url:
        assert url.endswith(f":{env_port}")
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", file_port)) != 0, "the port from the file must not be used"


# --- restart persistence --------------------------------------------------------------------------


async def test_restart_on_the_same_sqlite_data_dir_keeps_accounts(tmp_path: Path) -> None:
    # the sample config has no jwt_secret: it is generated into data/secrets.yaml on the first start
    config = copy_sample_config(tmp_path)
    env = server_env(free_port(), tmp_path / "data")
    log = tmp_path / "server.log"

    async with start_server(config, env, log) as url:
        reg = await http_register(url, "alice")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reg['access_token']}"}) as session:
            async with session.put(f"{url}/_matrix/client/v3/profile/{reg['user_id']}/displayname",
                                   json={"displayname": "Alice"}) as resp:
                assert resp.status == 200, await resp.text()
    assert (tmp_path / "data" / "whispr.db").exists()
    secret = yaml.safe_load((tmp_path / "data" / "secrets.yaml").read_text())["jwt_secret"]

    env = server_env(free_port(), tmp_path / "data")  # a new port, the same data dir
    async with start_server(config, env, log) as url:
        status, body = await http_login(url, "alice")
        assert status == 200, body
        assert body["user_id"] == reg["user_id"]
        async with aiohttp.ClientSession() as session:
            # the session from before the restart is still valid
            async with session.get(f"{url}/_matrix/client/v3/account/whoami",
                                   headers={"Authorization": f"Bearer {reg['access_token']}"}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["device_id"] == reg["device_id"]
            async with session.get(f"{url}/_matrix/client/v3/profile/{reg['user_id']}/displayname") as resp:
                assert resp.status == 200 and (await resp.json())["displayname"] == "Alice"
            async with session.get(f"{url}/_matrix/client/v3/register/available",
                                   params={"username": "alice"}) as resp:
                assert resp.status == 400 and (await resp.json())["errcode"] == "M_USER_IN_USE"
    assert yaml.safe_load((tmp_path / "data" / "secrets.yaml").read_text())["jwt_secret"] == secret


def test_a_server_process_does_not_load_cryptography() -> None:
    """cryptography is installed (development TLS certificates) but a running server, which signs
    tokens with HS256 only, keeps its ~9 MiB out; creating a certificate still works after."""
    code = ("import sys, homeserver.app, federation.endpoints, federation.service;"
            "assert 'cryptography' not in sys.modules, 'cryptography was loaded';"
            "import tempfile, pathlib; from federation.listener import generate_self_signed_cert;"
            "d = pathlib.Path(tempfile.mkdtemp()); generate_self_signed_cert(d / 'c', d / 'k', ['127.0.0.1']);"
            "assert (d / 'c').read_bytes().startswith(b'-----BEGIN CERTIFICATE')")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the process's log ----------------------------------------------------------------------------


async def test_log_lines_reach_the_log_within_a_second_and_at_shutdown(tmp_path: Path) -> None:
    """Lines are written in batches (homeserver/log_output.py): none may wait longer than the flush
    interval while the server runs, and none may be lost when it stops."""
    config = copy_sample_config(tmp_path)
    log = tmp_path / "server.log"
    async with start_server(config, server_env(free_port(), tmp_path / "data"), log) as url:
        assert "listening on" in log.read_text()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/_matrix/client/versions?probe=1") as resp:
                assert resp.status == 200
            await asyncio.sleep(1.5)
            assert "GET /_matrix/client/versions?probe=1 200" in log.read_text()
            async with session.get(f"{url}/_matrix/client/versions?probe=2") as resp:
                assert resp.status == 200
    lines = log.read_text().splitlines()
    assert any("GET /_matrix/client/versions?probe=2 200" in line for line in lines)
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line) for line in lines
               if "whispr.access" in line)
