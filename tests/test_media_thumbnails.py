"""Thumbnails: formats, methods, never upscaled, animation, caching, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import auth, register
from tests.media_helpers import LEGACY, MEDIA, image_bytes, opened, path_of, png_bomb, upload

FORMATS = [("PNG", "image/png", "image/png"), ("JPEG", "image/jpeg", "image/jpeg"),
           ("GIF", "image/gif", "image/png"), ("WEBP", "image/webp", "image/png")]


async def thumb(client: Any, token: str, uri: str, width: int, height: int, method: str = "scale",
                **params: str) -> Any:
    return await client.get(f"{MEDIA}/thumbnail/{path_of(uri)}", headers=auth(token),
                            params={"width": str(width), "height": str(height), "method": method, **params})


@pytest.mark.parametrize("fmt,upload_type,thumb_type", FORMATS)
async def test_crop_and_scale_of_each_format(client: Any, fmt: str, upload_type: str, thumb_type: str) -> None:
    alice = await register(client, "alice")
    token = alice["access_token"]
    uri = await upload(client, token, image_bytes(fmt, (1200, 800)), upload_type)
    resp = await thumb(client, token, uri, 96, 96, "crop")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == thumb_type
    assert resp.headers["Content-Disposition"].startswith('inline; filename="thumbnail.')
    assert opened(await resp.read()).size == (96, 96)
    # 300x200 scale: served from the 320x240 size, aspect kept, at least as large as asked
    resp = await thumb(client, token, uri, 300, 200)
    im = opened(await resp.read())
    assert im.size == (320, 213) and im.width >= 300 and im.height >= 200
    # beyond the standard sizes: a box rounded up to multiples of 64 (1024x704), the image fit in it
    resp = await thumb(client, token, uri, 1000, 700)
    assert opened(await resp.read()).size == (1024, 683)
    # larger than the original: the original itself, never upscaled
    resp = await thumb(client, token, uri, 5000, 5000)
    assert resp.headers["Content-Type"] == upload_type and opened(await resp.read()).size == (1200, 800)


async def test_small_images_are_not_upscaled(client: Any) -> None:
    alice = await register(client, "alice")
    token = alice["access_token"]
    original = image_bytes("PNG", (20, 10))
    uri = await upload(client, token, original, "image/png")
    for method in ("crop", "scale"):
        resp = await thumb(client, token, uri, 96, 96, method)
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
        assert await resp.read() == original  # the original itself, as the spec asks
    wide = await upload(client, token, image_bytes("JPEG", (400, 50)), "image/jpeg")
    resp = await thumb(client, token, wide, 96, 96, "crop")
    assert opened(await resp.read()).size == (96, 50)  # cut to the box, never stretched


async def test_animated_thumbnails(client: Any) -> None:
    alice = await register(client, "alice")
    token = alice["access_token"]
    uri = await upload(client, token, image_bytes("GIF", (200, 150), frames=4), "image/gif")
    resp = await thumb(client, token, uri, 96, 96, "crop", animated="true")
    assert resp.headers["Content-Type"] == "image/webp"
    im = opened(await resp.read())
    assert im.size == (96, 96) and getattr(im, "n_frames", 1) == 4
    for params in ({"animated": "false"}, {}):
        resp = await thumb(client, token, uri, 96, 96, "crop", **params)
        assert resp.headers["Content-Type"] == "image/png"
        assert getattr(opened(await resp.read()), "n_frames", 1) == 1
    # small animated original, animation asked for: the GIF itself
    resp = await thumb(client, token, uri, 320, 240, "scale", animated="true")
    assert resp.headers["Content-Type"] == "image/gif"
    # a still image asked for as animated: a still thumbnail
    still = await upload(client, token, image_bytes("JPEG"), "image/jpeg")
    resp = await thumb(client, token, still, 96, 96, "crop", animated="true")
    assert resp.headers["Content-Type"] == "image/jpeg"


async def test_thumbnails_are_cached_on_disk(serve: Any, make_config: Any) -> None:
    client = await serve()
    data_dir = Path(make_config().data_dir)
    alice = await register(client, "alice")
    token = alice["access_token"]
    uri = await upload(client, token, image_bytes("PNG"), "image/png")
    first = await (await thumb(client, token, uri, 32, 32, "crop")).read()
    cached = list((data_dir / "media" / "thumbnails").rglob("32x32-crop-s.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == first
    # the same size from the legacy path, and a request that maps to the same standard size
    resp = await client.get(f"{LEGACY}/thumbnail/{path_of(uri)}", params={"width": "30", "height": "20",
                                                                           "method": "crop"})
    assert await resp.read() == first
    assert len(list((data_dir / "media" / "thumbnails").rglob("*.png"))) == 1


async def test_refusals(serve: Any) -> None:
    client = await serve(media={"max_thumbnail_pixels": 4_000_000})
    alice = await register(client, "alice")
    token = alice["access_token"]
    text = await upload(client, token, b"just some words", "text/plain")
    broken = await upload(client, token, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png")
    for uri in (text, broken):
        resp = await thumb(client, token, uri, 96, 96)
        assert resp.status == 400 and (await resp.json())["errcode"] == "M_UNKNOWN"
    bomb = await upload(client, token, png_bomb(), "image/png")
    resp = await thumb(client, token, bomb, 96, 96)
    assert resp.status == 413 and (await resp.json())["errcode"] == "M_TOO_LARGE"
    big = await upload(client, token, image_bytes("PNG", (2500, 2000)), "image/png")
    resp = await thumb(client, token, big, 96, 96)
    assert resp.status == 413 and (await resp.json())["errcode"] == "M_TOO_LARGE"
    good = await upload(client, token, image_bytes("PNG", (100, 100)), "image/png")
    resp = await client.get(f"{MEDIA}/thumbnail/{path_of(good)}", headers=auth(token), params={"width": "32"})
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_MISSING_PARAM"
    for params in ({"width": "32", "height": "32", "method": "stretch"}, {"width": "-1", "height": "32"},
                   {"width": "a", "height": "32"}):
        resp = await client.get(f"{MEDIA}/thumbnail/{path_of(good)}", headers=auth(token), params=params)
        assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM", params
    resp = await client.get(f"{MEDIA}/thumbnail/test.local/nothing", headers=auth(token),
                            params={"width": "32", "height": "32"})
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
