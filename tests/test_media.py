"""Media repository over HTTP: uploads, downloads, headers, deduplication, the size cap, async uploads."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from tests.conftest import auth, register
from tests.media_helpers import CREATE, LEGACY, MEDIA, UPLOAD, admin_cli, image_bytes, path_of, upload, write_config


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "media" / "files").rglob("*") if p.is_file()]


async def test_upload_and_download_on_every_path(serve: Any) -> None:
    client = await serve(media={"legacy_unauthenticated_freeze": False})  # the legacy path serves all
    alice = await register(client, "alice")
    data = b"hello, media \x00\xff" * 1000
    uri = await upload(client, alice["access_token"], data, "text/plain", filename="notes.txt")
    h = auth(alice["access_token"])
    for url, headers in ((f"{MEDIA}/download/{path_of(uri)}", h), (f"{LEGACY}/download/{path_of(uri)}", {}),
                         (f"{MEDIA}/download/{path_of(uri)}/other.txt", h)):
        resp = await client.get(url, headers=headers)
        assert resp.status == 200, await resp.text()
        assert await resp.read() == data
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Security-Policy"].startswith("sandbox;")
        assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        name = "other.txt" if url.endswith("other.txt") else "notes.txt"
        assert resp.headers["Content-Disposition"] == f'inline; filename="{name}"'
    config = await client.get(f"{MEDIA}/config", headers=h)
    assert (await config.json())["m.upload.size"] == 100 * 1024 * 1024
    assert (await client.get(f"{LEGACY}/config", headers=h)).status == 200


async def test_disposition_follows_a_safe_type_list_and_names_are_sanitised(client: Any) -> None:
    alice = await register(client, "alice")
    token = alice["access_token"]
    html = await upload(client, token, b"<script>alert(1)</script>", "text/html", filename="../../etc/evil.html")
    resp = await client.get(f"{MEDIA}/download/{path_of(html)}", headers=auth(token))
    assert resp.headers["Content-Disposition"] == 'attachment; filename="evil.html"'
    assert resp.headers["Content-Security-Policy"].startswith("sandbox;")
    png = await upload(client, token, b"\x89PNG not really", "image/png", filename="caf\u00e9 \"x\".png")
    resp = await client.get(f"{MEDIA}/download/{path_of(png)}", headers=auth(token))
    assert resp.headers["Content-Disposition"] == \
        "inline; filename=\"caf_ x.png\"; filename*=utf-8''caf%C3%A9%20x.png"
    odd = await upload(client, token, b"x", "not a content type <script>")
    resp = await client.get(f"{MEDIA}/download/{path_of(odd)}", headers=auth(token))
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Disposition"] == "attachment"


async def test_unknown_or_malformed_media_and_missing_auth(client: Any) -> None:
    alice = await register(client, "alice")
    h = auth(alice["access_token"])
    for path in ("test.local/doesnotexist", "test.local/bad..id", "evil..server/abc", "test.local/a.b",
                 "test.local/a%2Fb"):
        resp = await client.get(f"{MEDIA}/download/{path}", headers=h)
        assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND", path
    uri = await upload(client, alice["access_token"], b"secret-ish")
    resp = await client.get(f"{MEDIA}/download/{path_of(uri)}")
    assert resp.status == 401 and (await resp.json())["errcode"] == "M_MISSING_TOKEN"
    resp = await client.post(UPLOAD, data=b"x")
    assert resp.status == 401
    # Another server's media with federation off: not found, nothing fetched.
    resp = await client.get(f"{MEDIA}/download/other.example/abcdef", headers=h)
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
    resp = await client.get(f"{LEGACY}/download/{path_of(uri)}", params={"allow_remote": "maybe"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM"


async def test_same_bytes_are_stored_once(serve: Any, make_config: Any) -> None:
    client = await serve()
    data_dir = Path(make_config().data_dir)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    data = b"the same picture" * 5000
    first = await upload(client, alice["access_token"], data, "image/png", "a.png")
    second = await upload(client, bob["access_token"], data, "application/octet-stream", "b.bin")
    assert first != second
    files = stored_files(data_dir)
    assert len(files) == 1 and files[0].name == hashlib.sha256(data).hexdigest()
    # Each keeps its own metadata.
    a = await client.get(f"{MEDIA}/download/{path_of(first)}", headers=auth(bob["access_token"]))
    b = await client.get(f"{MEDIA}/download/{path_of(second)}", headers=auth(bob["access_token"]))
    assert a.headers["Content-Type"] == "image/png" and 'filename="a.png"' in a.headers["Content-Disposition"]
    assert b.headers["Content-Type"] == "application/octet-stream" and "b.bin" in b.headers["Content-Disposition"]
    assert await a.read() == await b.read() == data


async def test_size_cap_is_enforced_while_reading(serve: Any, make_config: Any) -> None:
    client = await serve(media={"max_upload_bytes": 10_000})
    data_dir = Path(make_config().data_dir)
    alice = await register(client, "alice")
    h = {**auth(alice["access_token"]), "Content-Type": "application/octet-stream"}
    resp = await client.post(UPLOAD, data=b"x" * 10_001, headers=h)  # Content-Length says it up front
    assert resp.status == 413 and (await resp.json())["errcode"] == "M_TOO_LARGE"

    async def chunked() -> Any:  # no Content-Length: only counting the bytes can catch it
        for _ in range(40):
            yield b"y" * 1000
    resp = await client.post(UPLOAD, data=chunked(), headers=h)
    assert resp.status == 413 and (await resp.json())["errcode"] == "M_TOO_LARGE"
    assert stored_files(data_dir) == []
    assert list((data_dir / "media" / "tmp").iterdir()) == []
    assert (await client.post(UPLOAD, data=b"x" * 10_000, headers=h)).status == 200
    assert (await (await client.get(f"{MEDIA}/config", headers=h)).json())["m.upload.size"] == 10_000


async def test_async_upload_create_then_put(client: Any) -> None:
    alice, bob = await register(client, "alice"), await register(client, "bob")
    ha, hb = auth(alice["access_token"]), auth(bob["access_token"])
    created = await (await client.post(CREATE, headers=ha)).json()
    uri = created["content_uri"]
    assert uri.startswith("mxc://test.local/") and created["unused_expires_at"] > 0
    resp = await client.get(f"{MEDIA}/download/{path_of(uri)}", headers=hb, params={"timeout_ms": "0"})
    assert resp.status == 504 and (await resp.json())["errcode"] == "M_NOT_YET_UPLOADED"
    waiting = asyncio.ensure_future(client.get(f"{MEDIA}/download/{path_of(uri)}", headers=hb,
                                               params={"timeout_ms": "10000"}))
    await asyncio.sleep(0.2)
    resp = await client.put(f"{UPLOAD}/{path_of(uri)}", data=b"later", headers={**hb, "Content-Type": "text/plain"})
    assert resp.status == 403 and (await resp.json())["errcode"] == "M_FORBIDDEN"
    resp = await client.put(f"{UPLOAD}/{path_of(uri)}", params={"filename": "l.txt"}, data=b"later",
                            headers={**ha, "Content-Type": "text/plain"})
    assert resp.status == 200, await resp.text()
    got = await asyncio.wait_for(waiting, 5)
    assert got.status == 200 and await got.read() == b"later"
    resp = await client.put(f"{UPLOAD}/{path_of(uri)}", data=b"again", headers=ha)
    assert resp.status == 409 and (await resp.json())["errcode"] == "M_CANNOT_OVERWRITE_MEDIA"
    resp = await client.put(f"{UPLOAD}/test.local/neverCreated", data=b"x", headers=ha)
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_pending_uploads_are_limited(serve: Any) -> None:
    client = await serve(media={"max_pending_uploads": 2})
    alice = await register(client, "alice")
    h = auth(alice["access_token"])
    for _ in range(2):
        assert (await client.post(CREATE, headers=h)).status == 200
    resp = await client.post(CREATE, headers=h)
    assert resp.status == 429 and (await resp.json())["errcode"] == "M_LIMIT_EXCEEDED"


async def test_legacy_paths_are_frozen_for_media_uploaded_after_the_switch(serve: Any) -> None:
    # Before the switch (freeze off), an item reachable on the legacy path.
    before = await serve(media={"legacy_unauthenticated_freeze": False})
    alice = await register(before, "alice")
    h = auth(alice["access_token"])
    old = await upload(before, alice["access_token"], image_bytes("PNG", (200, 100)), "image/png")
    await before.close()
    # The first start with the freeze on (the default) records its time.
    for restart in range(2):
        client = await serve()
        if restart == 0:
            new = await upload(client, alice["access_token"], image_bytes("PNG", (200, 100)), "image/png")
        for uri, legacy_status in ((old, 200), (new, 404)):
            for path, params in (("download", {}), ("thumbnail", {"width": "32", "height": "32", "method": "crop"})):
                resp = await client.get(f"{LEGACY}/{path}/{path_of(uri)}", params=params)
                assert resp.status == legacy_status, (restart, uri, path)
                if legacy_status == 404:
                    assert (await resp.json())["errcode"] == "M_NOT_FOUND"
                resp = await client.get(f"{MEDIA}/{path}/{path_of(uri)}", params=params, headers=h)
                assert resp.status == 200, (restart, uri, path)
        # A pending async upload made after the freeze: not found at once, no waiting for it.
        pending = (await (await client.post(CREATE, headers=h)).json())["content_uri"]
        resp = await client.get(f"{LEGACY}/download/{path_of(pending)}", params={"timeout_ms": "5000"})
        assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
        await client.close()  # the restart must keep the recorded time, not move it past `new`


async def test_an_explicit_freeze_time(serve: Any) -> None:
    client = await serve(media={"legacy_unauthenticated_freeze_ts": int(time.time() * 1000) + 3_600_000})
    alice = await register(client, "alice")
    uri = await upload(client, alice["access_token"], b"made before the freeze")
    assert (await client.get(f"{LEGACY}/download/{path_of(uri)}")).status == 200


async def test_quarantine_holds_the_content_not_only_the_id(serve: Any, make_config: Any, tmp_path: Path) -> None:
    client = await serve()
    config_path = write_config(make_config(), tmp_path / "whispr.yaml")
    alice, bob = await register(client, "alice"), await register(client, "bob")
    ha, hb = auth(alice["access_token"]), auth(bob["access_token"])
    bad = image_bytes("PNG", (120, 80))
    first = await upload(client, alice["access_token"], bad, "image/png", "a.png")
    second = await upload(client, bob["access_token"], bad, "application/octet-stream", "b.bin")
    innocent = await upload(client, alice["access_token"], image_bytes("PNG", (80, 120)), "image/png")

    async def status(uri: str) -> tuple[int, int]:
        download = await client.get(f"{MEDIA}/download/{path_of(uri)}", headers=hb)
        thumbnail = await client.get(f"{MEDIA}/thumbnail/{path_of(uri)}", headers=hb,
                                     params={"width": "32", "height": "32", "method": "crop"})
        for resp in (download, thumbnail):
            if resp.status == 404:
                assert (await resp.json())["errcode"] == "M_NOT_FOUND"
        return download.status, thumbnail.status

    assert await status(second) == (200, 200)  # a thumbnail cached before the quarantine
    done = await asyncio.to_thread(admin_cli, config_path, "quarantine-media", first)
    assert done.returncode == 0, done.stderr
    assert f"quarantined {first} and 1 other item(s) with the same content" in done.stdout
    # Every item with those bytes is quarantined, thumbnails included; other content is not.
    assert await status(first) == await status(second) == (404, 404)
    assert await status(innocent) == (200, 200)
    # The same bytes uploaded again, directly or async, get an ID (as Synapse) but serve nothing.
    third = await upload(client, bob["access_token"], bad, "image/png", "again.png")
    slot = (await (await client.post(CREATE, headers=hb)).json())["content_uri"]
    resp = await client.put(f"{UPLOAD}/{path_of(slot)}", data=bad, headers={**hb, "Content-Type": "image/png"})
    assert resp.status == 200
    assert await status(third) == await status(slot) == (404, 404)
    # The bytes are kept (quarantine is not deletion): one file for them all.
    assert hashlib.sha256(bad).hexdigest() in {p.name for p in stored_files(Path(make_config().data_dir))}
    # --undo on any of them lifts the item and the content: all four are back.
    done = await asyncio.to_thread(admin_cli, config_path, "quarantine-media", "--undo", third)
    assert done.returncode == 0, done.stderr
    assert f"released from quarantine {third} and 3 other item(s) with the same content" in done.stdout
    for uri in (first, second, third, slot):
        assert await status(uri) == (200, 200), uri
    resp = await client.get(f"{MEDIA}/download/{path_of(first)}", headers=ha)
    assert await resp.read() == bad
