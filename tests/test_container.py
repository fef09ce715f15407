"""The container image and the compose stack, built and run with Podman (no Docker engine here).

docker/podman-setup.sh installs Podman and builds a stand-in for the Dockerfile's base image from
Debian's packages (no image registry is reachable); `podman build --from` swaps it in. The image
runs against the host's PostgreSQL and Redis with `--network host`, federates with a Whispr
process, and keeps its data and signing key across a restart. The compose file's homeserver
service is run the way compose would run it (its image, environment, volume and health check).
Runs when WHISPR_TEST_CONTAINERS=1 (CI sets it); with WHISPR_TEST_STRICT=1 it must.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest
import yaml

from bench.servers import free_port, start_whispr
from tests.conftest import POSTGRES_URL, REDIS_URL, STRICT, fresh_postgres_database, need
from tests.test_federation_whispr import Client, federation_config, membership_in_timeline

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = os.environ.get("WHISPR_TEST_CONTAINERS") == "1"
STANDIN = "localhost/whispr-python-standin:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
IMAGE_UID = 991  # the image's whispr user owns /data


@dataclass
class Container:
    """A homeserver container: what Client needs of a server, and its name for podman."""

    name: str
    base_url: str
    server_name: str


def podman(env: dict[str, str], *args: str, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, dict[str, str]]]:
    """Build the image once for the module; yields (tag, environment for podman)."""
    if not CONTAINERS:
        message = "container suite needs WHISPR_TEST_CONTAINERS=1 (and root for apt/podman)"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    conf = subprocess.run(["bash", str(ROOT / "docker" / "podman-setup.sh")], capture_output=True, text=True,
                          timeout=900)
    assert conf.returncode == 0, conf.stderr
    env = {**os.environ, "CONTAINERS_CONF": conf.stdout.strip().splitlines()[-1]}
    tag = f"localhost/whispr:test-{secrets.token_hex(4)}"
    podman(env, "build", "--quiet", "--format", "docker", "--from", STANDIN,
           "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-f", "docker/Dockerfile", "-t", tag, str(ROOT))
    try:
        yield tag, env
    finally:
        podman(env, "rmi", "-f", tag, check=False)


def data_volume(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a listening TCP socket on `port` is bound to (the container shares the
    host's network, so /proc/net/tcp shows its sockets)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


async def wait_healthy(base_url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(base_url + "/health") as resp:
                    if resp.status == 200 and await resp.text() == "OK":
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    pytest.fail(f"{base_url} never became healthy")


async def signing_keys(session: aiohttp.ClientSession, server_name: str) -> dict[str, Any]:
    async with session.get(f"https://{server_name}/_matrix/key/v2/server", ssl=False) as resp:
        assert resp.status == 200
        return dict((await resp.json())["verify_keys"])


@pytest.fixture
async def postgres_db() -> AsyncIterator[str]:
    need(POSTGRES_URL, "postgres")
    need(REDIS_URL, "redis")
    url, drop = await fresh_postgres_database()
    try:
        yield url
    finally:
        await drop()


async def test_image_serves_federates_and_keeps_its_data(image: tuple[str, dict[str, str]], tmp_path: Path,
                                                         postgres_db: str) -> None:
    tag, env = image
    client_port, federation_port = free_port(), free_port()
    name = f"whispr-test-{secrets.token_hex(4)}"
    server = Container(name, f"http://127.0.0.1:{client_port}", f"127.0.0.1:{federation_port}")
    data = data_volume(tmp_path, "data")
    podman(env, "run", "-d", "--name", name, "--network", "host", "-v", f"{data}:/data",
           "-e", f"WHISPR_SERVER_NAME={server.server_name}", "-e", f"WHISPR_LISTEN__PORT={client_port}",
           "-e", f"WHISPR_PUBLIC_BASEURL={server.base_url}",
           "-e", "WHISPR_DATABASE__ENGINE=postgres", "-e", f"WHISPR_DATABASE__URL={postgres_db}",
           "-e", f"WHISPR_REDIS__URL={REDIS_URL}", "-e", f"WHISPR_REDIS__KEY_PREFIX=whispr-ctr-{name}:",
           "-e", "WHISPR_FEDERATION__VERIFY_TLS=false",
           "-e", "WHISPR_FEDERATION__ALLOWED_PRIVATE_RANGES=127.0.0.0/8",
           "-e", "WHISPR_FEDERATION__DESTINATION_MIN_RETRY_MS=300",
           "-e", "WHISPR_FEDERATION__DESTINATION_MAX_RETRY_MS=2000", tag)
    peer = None
    try:
        await wait_healthy(server.base_url)
        assert podman(env, "exec", name, "id", "-u") == str(IMAGE_UID)  # not root
        # Both listeners on every interface, so that other servers and the host's proxy reach them.
        assert listening_addresses(client_port) == {"0.0.0.0"}
        assert listening_addresses(federation_port) == {"0.0.0.0"}
        podman(env, "healthcheck", "run", name)  # the image's own HEALTHCHECK passes
        peer = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                       extra_config=federation_config())
        async with aiohttp.ClientSession() as session:
            keys_before = await signing_keys(session, server.server_name)
            alice = await Client.register(session, server, "alice")  # type: ignore[arg-type]
            bob = await Client.register(session, peer, "bob")
            await alice.sync_until(lambda _: True)
            await bob.sync_until(lambda _: True)
            room = (await alice.call("POST", "/createRoom", json={"preset": "private_chat"}))["room_id"]
            await alice.send(room, "from the container")
            await alice.call("POST", f"/rooms/{room}/invite", json={"user_id": bob.user_id})
            await bob.sync_until(lambda body: room in body["rooms"]["invite"])
            await bob.call("POST", f"/join/{room}")
            await alice.sync_until(membership_in_timeline(room, bob.user_id, "join"))
            await bob.send(room, "from the process")
            assert await alice.collect_messages(room, 1) == ["from the process"]

            # SIGTERM: a clean, quick exit; then the same data and signing key after a start.
            started = time.monotonic()
            podman(env, "stop", "-t", "30", name)
            assert time.monotonic() - started < 25
            assert podman(env, "inspect", name, "--format", "{{.State.ExitCode}}") == "0"
            assert {p.name for p in data.iterdir()} >= {"signing.key", "secrets.yaml", "tls.crt", "tls.key"}
            podman(env, "start", name)
            await wait_healthy(server.base_url)
            assert await signing_keys(session, server.server_name) == keys_before
            login = await session.post(server.base_url + "/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "long enough pw"})
            assert login.status == 200, await login.text()
            again = Client(session, server, alice.user_id, (await login.json())["access_token"])  # type: ignore[arg-type]
            await alice.send(room, "after the restart")  # the old access token still holds

            def arrived(body: dict[str, Any]) -> bool:
                events = body["rooms"]["join"].get(room, {}).get("timeline", {}).get("events", [])
                return any(e["content"].get("body") == "after the restart" for e in events)
            await bob.sync_until(arrived)
            messages = await again.call("GET", f"/rooms/{room}/messages", params={"dir": "b", "limit": "20"})
            bodies = [e["content"].get("body") for e in messages["chunk"] if e["type"] == "m.room.message"]
            assert bodies[:3] == ["after the restart", "from the process", "from the container"]
    finally:
        if peer is not None:
            await asyncio.to_thread(peer.stop)
        podman(env, "rm", "-f", "-t", "5", name, check=False)


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's ${VAR:-default} substitution ($$ is a literal $), over a loaded YAML tree."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: variables.get(m.group(1), m.group(2) or ""), value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    return value


def test_compose_file_declares_health_ordering_ports_and_volumes() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"homeserver", "postgres", "redis"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert service["image"].startswith("${"), f"{name}: image name must be overridable"
    hs = services["homeserver"]
    assert hs["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                "redis": {"condition": "service_healthy"}}
    published = [str(p).split(":")[-1] for p in hs["ports"]]
    assert "8008" in published and "8448" in published  # the federation port too
    assert any(v.endswith(":/data") for v in hs["volumes"])
    assert set(compose["volumes"]) == {"whispr-data", "pg-data"}


async def test_compose_homeserver_service_runs_as_compose_would(image: tuple[str, dict[str, str]], tmp_path: Path,
                                                                postgres_db: str) -> None:
    """The homeserver service with the compose file's image, environment, volume and health check;
    its `postgres` and `redis` hosts are the host's servers (the images cannot be pulled here)."""
    tag, env = image
    database = postgres_db.rsplit("/", 1)[1]
    variables = {"WHISPR_IMAGE": tag, "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "unused",
                 "POSTGRES_DB": database, "WHISPR_SERVER_NAME": "localhost:8448"}
    service = interpolate(yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text()), variables)[
        "services"]["homeserver"]
    assert service["image"] == tag
    client_port = free_port()
    environment = {**service["environment"], "WHISPR_LISTEN__PORT": str(client_port),
                   "WHISPR_FEDERATION__LISTEN__PORT": str(free_port())}  # host network: free ports
    health = service["healthcheck"]
    assert health["test"][0] == "CMD"
    health_cmd = subprocess.list2cmdline(health["test"][1:]).replace("8008", str(client_port))
    name = f"whispr-compose-{secrets.token_hex(4)}"
    data = data_volume(tmp_path, "compose-data")
    args = ["run", "-d", "--name", name, "--network", "host", "-v", f"{data}:/data",
            "--add-host", "postgres:127.0.0.1", "--add-host", "redis:127.0.0.1",
            "--health-cmd", health_cmd, "--health-interval", health["interval"],
            "--health-retries", str(health["retries"]), "--stop-timeout", "30"]
    for key, value in environment.items():
        args += ["-e", f"{key}={value}"]
    podman(env, *args, service["image"])
    try:
        base_url = f"http://127.0.0.1:{client_port}"
        await wait_healthy(base_url)
        podman(env, "healthcheck", "run", name)  # the compose file's health check passes
        async with aiohttp.ClientSession() as session:
            async with session.get(base_url + "/_matrix/client/versions") as resp:
                assert resp.status == 200
        logs = subprocess.run(["podman", "logs", name], env=env, capture_output=True, text=True)
        assert "(database: postgres, redis: yes)" in logs.stdout + logs.stderr
    finally:
        podman(env, "rm", "-f", "-t", "5", name, check=False)
