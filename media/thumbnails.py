"""Thumbnails with Pillow: the sizes the spec suggests, `crop` and `scale`, never upscaled.

The pixel work is in `thumbnail_render`, imported on the first thumbnail only: Pillow costs
a server that never makes one a few MiB of memory. It is synchronous and CPU-bound: the
repository runs it on the thread pool. Only JPEG, PNG (APNG), GIF and WebP are decoded: fewer decoders, fewer ways in for a hostile
file. The pixel count is read from the header and checked before any pixel is decoded, which
is what keeps decompression bombs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Method = Literal["crop", "scale"]

# The spec's recommended thumbnail sizes.
STANDARD_SIZES: tuple[tuple[int, int, Method], ...] = (
    (32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale"))
# Requests beyond the standard sizes are rounded up to a multiple of this (so a client cannot
# fill the cache with one thumbnail per pixel) and capped at MAX_SIZE.
SIZE_STEP = 64
MAX_SIZE = 4096

FORMAT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


class ThumbnailError(Exception):
    """The content cannot be thumbnailed; `too_large` tells a refusal on size from the rest."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class ThumbnailSpec:
    width: int
    height: int
    method: Method
    animated: bool

    @property
    def file_stem(self) -> str:
        return f"{self.width}x{self.height}-{self.method}-{'a' if self.animated else 's'}"


def choose_spec(width: int, height: int, method: Method, animated: bool) -> ThumbnailSpec:
    """The cached size that serves a request: the smallest standard one at least as large."""
    fits = [(w, h) for w, h, m in STANDARD_SIZES if m == method and w >= width and h >= height]
    if fits:
        w, h = min(fits, key=lambda s: s[0] * s[1])
        return ThumbnailSpec(w, h, method, animated)

    def round_up(n: int) -> int:
        return min(MAX_SIZE, -(-n // SIZE_STEP) * SIZE_STEP)

    return ThumbnailSpec(round_up(width), round_up(height), method, animated)


@dataclass(frozen=True)
class Thumbnail:
    content_type: str
    # The encoded thumbnail, or None when the original itself is the answer (it is no larger
    # than asked for and already in a format fit to show inline).
    data: bytes | None


def make_thumbnail(source: Path, spec: ThumbnailSpec, *, max_pixels: int, max_frames: int) -> Thumbnail:
    from media.thumbnail_render import render

    return render(source, spec, max_pixels=max_pixels, max_frames=max_frames)
