"""Remote media between two Whispr processes: fetch over federation, thumbnails of it, the cache's
expiry, the admin CLI (quarantine, delete), and the federation endpoint's own checks."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from bench.servers import REPO_ROOT, RunningServer, deep_merge, free_port, start_whispr
from tests.media_helpers import LEGACY, MEDIA, UPLOAD, image_bytes, opened, path_of
from tests.test_federation_whispr import Client, federation_config


def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "homeserver", *args[:1], "--config", str(server.config_path),
                           *args[1:]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """A holds the media; B fetches it and keeps it for 2 s unused (swept every second)."""
    a = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                extra_config=federation_config())
    try:
        b = await asyncio.to_thread(start_whispr, server_name=f"127.0.0.1:{free_port()}",
                                    extra_config=deep_merge(federation_config(), {
                                        "media": {"remote_cache_ttl_s": 2, "remote_sweep_interval_s": 1}}))
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


async def upload(session: aiohttp.ClientSession, user: Client, data: bytes, content_type: str,
                 filename: str) -> str:
    resp = await session.post(user.server.base_url + UPLOAD, data=data, params={"filename": filename},
                              headers={**user.h, "Content-Type": content_type})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["content_uri"])


async def get(session: aiohttp.ClientSession, user: Client, path: str, **params: str) -> tuple[int, Any, bytes]:
    async with session.get(user.server.base_url + path, headers=user.h, params=params) as resp:
        return resp.status, resp.headers, await resp.read()


def cached_files(server: RunningServer) -> list[Path]:
    return [p for p in (server.data_dir / "data" / "media" / "files").rglob("*") if p.is_file()]


async def test_remote_media_is_fetched_cached_and_expires(pair: tuple[RunningServer, RunningServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, a, "alice")
        bob = await Client.register(session, b, "bob")
        picture = image_bytes("JPEG", (900, 600))
        uri = await upload(session, alice, picture, "image/jpeg", "holiday.jpg")
        blob = bytes(range(256)) * 12_000  # ~3 MB, streamed through
        blob_uri = await upload(session, alice, blob, "application/octet-stream", "data.bin")

        # The legacy unauthenticated path fetches nothing from A: anything fetched now would be
        # newer than the freeze of unauthenticated media (on by default).
        for path in ("download", "thumbnail"):
            status, _, body = await get(session, bob, f"{LEGACY}/{path}/{path_of(uri)}", width="32", height="32")
            assert status == 404 and b"M_NOT_FOUND" in body
        assert cached_files(b) == []

        # Several of bob's requests at once: one fetch from A, every answer complete.
        results = await asyncio.gather(*(get(session, bob, f"{MEDIA}/download/{path_of(blob_uri)}")
                                         for _ in range(5)))
        assert all(status == 200 and body == blob for status, _, body in results)
        status, headers, body = await get(session, bob, f"{MEDIA}/download/{path_of(uri)}")
        assert status == 200 and body == picture
        assert headers["Content-Type"] == "image/jpeg"
        assert headers["Content-Disposition"] == 'inline; filename="holiday.jpg"'
        assert {p.name for p in cached_files(b)} == {hashlib.sha256(picture).hexdigest(),
                                                       hashlib.sha256(blob).hexdigest()}
        status, headers, body = await get(session, bob, f"{MEDIA}/thumbnail/{path_of(uri)}",
                                          width="96", height="96", method="crop")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and opened(body).size == (96, 96)

        # Unknown on A, and an origin that does not answer.
        status, _, body = await get(session, bob, f"{MEDIA}/download/{a.server_name}/noSuchMedia")
        assert status == 404 and b"M_NOT_FOUND" in body
        status, _, body = await get(session, bob, f"{MEDIA}/download/127.0.0.1:1/whatever")
        assert status == 502, body

        # A quarantines the picture: B keeps serving its cached copy until it expires unused.
        done = await asyncio.to_thread(cli, a, "quarantine-media", uri)
        assert done.returncode == 0 and f"quarantined {uri}" in done.stdout, done.stderr
        status, _, _ = await get(session, alice, f"{MEDIA}/download/{path_of(uri)}")
        assert status == 404
        status, _, body = await get(session, bob, f"{MEDIA}/download/{path_of(uri)}")
        assert status == 200 and body == picture
        await asyncio.sleep(3.5)  # > remote_cache_ttl_s plus a sweep interval
        assert cached_files(b) == []  # bytes and thumbnails gone
        status, _, body = await get(session, bob, f"{MEDIA}/download/{path_of(uri)}")
        assert status == 404 and b"M_NOT_FOUND" in body  # refetched: A refuses now
        # Released again: B fetches it anew.
        assert (await asyncio.to_thread(cli, a, "quarantine-media", "--undo", uri)).returncode == 0
        status, _, body = await get(session, bob, f"{MEDIA}/download/{path_of(uri)}")
        assert status == 200 and body == picture

        # Deleted on A: gone for alice; the bytes are removed from A's store.
        done = await asyncio.to_thread(cli, a, "delete-media", blob_uri)
        assert done.returncode == 0 and f"deleted {blob_uri}" in done.stdout
        status, _, _ = await get(session, alice, f"{MEDIA}/download/{path_of(blob_uri)}")
        assert status == 404
        assert hashlib.sha256(blob).hexdigest() not in {p.name for p in cached_files(a)}
        done = await asyncio.to_thread(cli, a, "delete-media", blob_uri)
        assert done.returncode == 1 and "not found" in done.stdout
        done = await asyncio.to_thread(cli, a, "delete-media", "https://not.mxc/x")
        assert done.returncode == 1

        # Quarantine holds content: bytes quarantined on B (under a local ID) are not served when
        # they come from A under another ID, not even by the fetch that brings them.
        banned = image_bytes("PNG", (64, 48))
        local_copy = await upload(session, bob, banned, "image/png", "copy.png")
        assert (await asyncio.to_thread(cli, b, "quarantine-media", local_copy)).returncode == 0
        remote_copy = await upload(session, alice, banned, "image/png", "original.png")
        status, _, body = await get(session, bob, f"{MEDIA}/download/{path_of(remote_copy)}")
        assert status == 404 and b"M_NOT_FOUND" in body
        status, _, body = await get(session, alice, f"{MEDIA}/download/{path_of(remote_copy)}")
        assert status == 200 and body == banned  # A has quarantined nothing


async def test_federation_media_endpoint_needs_a_signed_request(pair: tuple[RunningServer, RunningServer]) -> None:
    a, _ = pair
    async with aiohttp.ClientSession() as session:
        alice = await Client.register(session, a, "alice")
        uri = await upload(session, alice, b"abc", "text/plain", "a.txt")
        media_id = uri.rsplit("/", 1)[1]
        url = f"https://{a.server_name}/_matrix/federation/v1/media/download/{media_id}"
        async with session.get(url, ssl=False) as resp:
            assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"
