"""A 100 MB round trip through a server process whose memory must stay flat, and matrix-nio
clients sharing an avatar through the media repository."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import AsyncIterator

import aiohttp
import nio
import pytest

from bench.servers import RunningServer, start_whispr
from tests.media_helpers import MEDIA, UPLOAD, image_bytes, path_of
from tests.test_federation_whispr import Client

SIZE = 100 * 1024 * 1024
CHUNK = 1024 * 1024


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    s = await asyncio.to_thread(start_whispr, extra_config={"media": {"max_upload_bytes": 200 * 1024 * 1024}})
    try:
        yield s
    finally:
        await asyncio.to_thread(s.stop)


def pattern(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (CHUNK // 32)


async def test_100_mb_round_trip_keeps_memory_flat(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as session:
        user = await Client.register(session, server, "alice")
        # Warm up the paths once so the baseline includes what any upload/download allocates.
        resp = await session.post(server.base_url + UPLOAD, data=b"warm" * 100_000, headers=user.h)
        warm = (await resp.json())["content_uri"]
        async with session.get(server.base_url + f"{MEDIA}/download/{path_of(warm)}", headers=user.h) as r:
            await r.read()
        baseline = server.rss_kb("VmHWM")

        sent = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            for i in range(SIZE // CHUNK):
                chunk = pattern(i)
                sent.update(chunk)
                yield chunk

        resp = await session.post(server.base_url + UPLOAD, data=body(), params={"filename": "big.bin"},
                                  headers={**user.h, "Content-Type": "application/octet-stream"})
        assert resp.status == 200, await resp.text()
        uri = (await resp.json())["content_uri"]
        after_upload = server.rss_kb("VmHWM")

        received, size = hashlib.sha256(), 0
        async with session.get(server.base_url + f"{MEDIA}/download/{path_of(uri)}", headers=user.h) as r:
            assert r.status == 200 and r.content_length == SIZE
            async for chunk in r.content.iter_chunked(CHUNK):
                received.update(chunk)
                size += len(chunk)
        assert size == SIZE and received.digest() == sent.digest()
        peak = server.rss_kb("VmHWM")
        print(f"100 MiB round trip: peak RSS {baseline / 1024:.1f} -> {after_upload / 1024:.1f} (upload)"
              f" -> {peak / 1024:.1f} MiB (download)")
        # Flat: the peak resident size grew by far less than the file (a few MiB of buffers).
        assert after_upload - baseline < 32 * 1024, (baseline, after_upload)
        assert peak - baseline < 32 * 1024, (baseline, peak)

        # Ranges work on the same file (clients resume downloads and seek in videos).
        async with session.get(server.base_url + f"{MEDIA}/download/{path_of(uri)}",
                               headers={**user.h, "Range": f"bytes={SIZE - 10}-"}) as r:
            assert r.status == 206 and await r.read() == pattern(SIZE // CHUNK - 1)[-10:]


async def test_nio_clients_share_an_avatar(server: RunningServer) -> None:
    avatar = image_bytes("PNG", (256, 256))
    alice = nio.AsyncClient(server.base_url, "alice")
    bob = nio.AsyncClient(server.base_url, "bob")
    try:
        assert isinstance(await alice.register("alice", "a long password"), nio.RegisterResponse)
        assert isinstance(await bob.register("bob", "a long password"), nio.RegisterResponse)
        uploaded, _ = await alice.upload(io.BytesIO(avatar), content_type="image/png", filename="me.png",
                                         filesize=len(avatar))
        assert isinstance(uploaded, nio.UploadResponse), uploaded
        assert isinstance(await alice.set_avatar(uploaded.content_uri), nio.ProfileSetAvatarResponse)

        got = await bob.get_avatar(alice.user_id)
        assert isinstance(got, nio.ProfileGetAvatarResponse) and got.avatar_url == uploaded.content_uri
        downloaded = await bob.download(mxc=got.avatar_url)
        assert isinstance(downloaded, nio.DownloadResponse), downloaded
        assert downloaded.body == avatar and downloaded.content_type == "image/png"
        assert downloaded.filename == "me.png"
        server_name, media_id = path_of(got.avatar_url).split("/")
        thumb = await bob.thumbnail(server_name, media_id, 96, 96, nio.ResizingMethod.crop)
        assert isinstance(thumb, nio.ThumbnailResponse), thumb
        assert thumb.content_type == "image/png" and thumb.body[:8] == b"\x89PNG\r\n\x1a\n"

        # A group's avatar and an image message reference media the same way.
        room = await alice.room_create(name="Photos", initial_state=[
            {"type": "m.room.avatar", "state_key": "", "content": {"url": uploaded.content_uri}}])
        assert isinstance(room, nio.RoomCreateResponse), room
        sent = await alice.room_send(room.room_id, "m.room.message", {
            "msgtype": "m.image", "body": "me.png", "url": uploaded.content_uri,
            "info": {"mimetype": "image/png", "size": len(avatar), "w": 256, "h": 256}})
        assert isinstance(sent, nio.RoomSendResponse), sent
        state = await alice.room_get_state_event(room.room_id, "m.room.avatar")
        assert isinstance(state, nio.RoomGetStateEventResponse) and state.content["url"] == uploaded.content_uri
    finally:
        await alice.close()
        await bob.close()
