"""`make run` itself, then matrix-nio (a real client) against it: register, login, whoami, display name, logout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import nio

from bench.servers import REPO_ROOT, free_port, wait_ready


async def test_make_run_serves_a_real_client(tmp_path: Path) -> None:
    port, federation_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPR_")}
    env.update(WHISPR_LISTEN__PORT=str(port), WHISPR_DATA_DIR=str(tmp_path / "data"),
               WHISPR_FEDERATION__LISTEN__PORT=str(federation_port),
               WHISPR_PASSWORDS__ARGON2_OPSLIMIT="1", WHISPR_PASSWORDS__ARGON2_MEMLIMIT_KIB="8")
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(["make", "run"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}", server, 120, tmp_path / "server.log")
        client = nio.AsyncClient(f"http://127.0.0.1:{port}", "alice")
        try:
            registered = await client.register("alice", "a long password")
            assert isinstance(registered, nio.RegisterResponse), registered
            await client.logout()
            logged_in = await client.login("a long password", device_name="nio")
            assert isinstance(logged_in, nio.LoginResponse), logged_in
            who = await client.whoami()
            assert isinstance(who, nio.WhoamiResponse) and who.user_id == "@alice:localhost:8448"
            assert isinstance(await client.set_displayname("Alice"), nio.ProfileSetDisplayNameResponse)
            name = await client.get_displayname()
            assert isinstance(name, nio.ProfileGetDisplayNameResponse) and name.displayname == "Alice"
            token = client.access_token
            assert isinstance(await client.logout(), nio.LogoutResponse)
            client.access_token = token
            assert isinstance(await client.whoami(), nio.WhoamiError)
        finally:
            await client.close()
        assert (tmp_path / "data" / "whispr.db").exists()  # the embedded default: SQLite under data_dir
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
