"""Thumbnails: formats, methods, never upscaled, animation, caching, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homeserver.config import ConfigError, load_config
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
    # beyond the made sizes: the largest of them (800x600), the image fit in it
    for width, height in ((1000, 700), (5000, 5000)):
        resp = await thumb(client, token, uri, width, height)
        assert resp.headers["Content-Type"] == thumb_type and opened(await resp.read()).size == (800, 533)


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
    client = await serve(media={"legacy_unauthenticated_freeze": False})
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


def thumbnail_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "media" / "thumbnails").rglob("*") if p.is_file()]


async def test_only_the_configured_sizes_are_ever_made(serve: Any, make_config: Any) -> None:
    client = await serve(media={"extra_thumbnail_sizes": ["1000x750-scale"]})
    data_dir = Path(make_config().data_dir)
    alice = await register(client, "alice")
    token = alice["access_token"]
    uri = await upload(client, token, image_bytes("JPEG", (1200, 800)), "image/jpeg")
    # 50 distinct sizes and methods, as an attacker would ask for them...
    for i in range(50):
        method = "crop" if i % 2 else "scale"
        resp = await thumb(client, token, uri, 8 + i * 41, 5 + i * 29, method)
        assert resp.status == 200, await resp.text()
        im = opened(await resp.read())
        if method == "crop":
            assert im.size in ((32, 32), (96, 96))
        else:
            assert max(im.size) <= 1000
    # ...make at most one file per configured size: the spec's five and the extra one.
    made = {p.name.split(".")[0] for p in thumbnail_files(data_dir)}
    assert len(thumbnail_files(data_dir)) == len(made) <= 6
    assert made <= {"32x32-crop-s", "96x96-crop-s", "320x240-scale-s", "640x480-scale-s", "800x600-scale-s",
                    "1000x750-scale-s"}
    # The nearest made size answers: the smallest of the method at least as large, else the largest.
    resp = await thumb(client, token, uri, 900, 700)
    assert opened(await resp.read()).size == (1000, 667)
    resp = await thumb(client, token, uri, 3000, 3000)
    assert opened(await resp.read()).size == (1000, 667)
    resp = await thumb(client, token, uri, 500, 500, "crop")
    assert opened(await resp.read()).size == (96, 96)


async def test_making_thumbnails_is_rate_limited_per_requester(serve: Any) -> None:
    client = await serve(rate_limits={"enabled": True},
                         media={"thumbnail_generation_rate": {"per_second": 0.001, "burst": 2},
                                "legacy_unauthenticated_freeze": False})
    alice, bob = await register(client, "alice"), await register(client, "bob")
    uri = await upload(client, alice["access_token"], image_bytes("PNG", (400, 300)), "image/png")
    for width in (32, 96):
        assert (await thumb(client, alice["access_token"], uri, width, width, "crop")).status == 200
    resp = await thumb(client, alice["access_token"], uri, 320, 240)  # a third size to make
    assert resp.status == 429, resp.status
    body = await resp.json()
    assert body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
    # Made thumbnails are served whatever the bucket holds, for any request that maps to them.
    for width, height in ((32, 32), (30, 20), (90, 90)):
        assert (await thumb(client, alice["access_token"], uri, width, height, "crop")).status == 200
    # Another user has a bucket of their own.
    assert (await thumb(client, bob["access_token"], uri, 320, 240)).status == 200
    # Without a token (the legacy path): limited per IP address.
    for params, expected in (({"width": "640", "height": "480"}, 200), ({"width": "800", "height": "600"}, 200),
                             ({"width": "32", "height": "32", "method": "crop", "animated": "true"}, 429),
                             ({"width": "320", "height": "240"}, 200)):
        resp = await client.get(f"{LEGACY}/thumbnail/{path_of(uri)}", params=params)
        assert resp.status == expected, (params, resp.status)


def test_extra_thumbnail_sizes_are_checked_and_bounded() -> None:
    config = load_config(None, environ={"WHISPR_MEDIA__EXTRA_THUMBNAIL_SIZES": "1280x960-scale,200x200-crop"})
    assert config.media.extra_thumbnail_sizes == ["1280x960-scale", "200x200-crop"]
    for bad in (["big"], ["0x10-crop"], ["100x100-stretch"], ["5000x10-scale"],
                [f"{n}x{n}-crop" for n in range(100, 105)]):  # one more than allowed
        with pytest.raises(ConfigError, match="extra_thumbnail_sizes"):
            load_config(None, environ={}, overrides={"media": {"extra_thumbnail_sizes": bad}})
