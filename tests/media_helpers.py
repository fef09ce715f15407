"""Images for the media tests, made with Pillow, and small upload helpers."""

from __future__ import annotations

import dataclasses
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from homeserver.config import Config
from tests.conftest import auth

UPLOAD = "/_matrix/media/v3/upload"
CREATE = "/_matrix/media/v1/create"
MEDIA = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"


def image_bytes(fmt: str, size: tuple[int, int] = (1200, 800), frames: int = 1) -> bytes:
    """A gradient image (so resizing has something to do); `frames` > 1 makes it animated."""
    def frame(shift: int) -> Image.Image:
        im = Image.new("RGB", size)
        w, h = size
        im.putdata([((x * 255 // w + shift) % 256, (y * 255 // h) % 256, 128) for y in range(h) for x in range(w)])
        return im
    buf = io.BytesIO()
    if frames == 1:
        frame(0).save(buf, fmt)
    else:
        images = [frame(i * 40) for i in range(frames)]
        images[0].save(buf, fmt, save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's calling card)."""
    raw = bytearray(image_bytes("PNG", (8, 8)))
    # IHDR is the first chunk: 8-byte signature, length, b"IHDR", width, height, ...
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF
    raw[29:33] = struct.pack(">I", crc)
    return bytes(raw)


def opened(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


async def upload(client: Any, token: str, data: bytes, content_type: str = "application/octet-stream",
                 filename: str | None = None) -> str:
    params = {"filename": filename} if filename else None
    resp = await client.post(UPLOAD, data=data, params=params,
                             headers={**auth(token), "Content-Type": content_type})
    assert resp.status == 200, await resp.text()
    uri = (await resp.json())["content_uri"]
    assert uri.startswith("mxc://")
    return uri


def path_of(mxc: str) -> str:
    """`server/mediaId` of an mxc URI."""
    return mxc[len("mxc://"):]


def admin_cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m homeserver COMMAND --config FILE ARGS...`, as an operator runs it beside the server."""
    command, *rest = args
    return subprocess.run([sys.executable, "-m", "homeserver", command, "--config", str(config_path), *rest],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def write_config(config: Config, path: Path) -> Path:
    """The test's config as a YAML file the CLI can load (same database, same media store)."""
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return path
