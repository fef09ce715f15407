"""Thumbnails with Pillow: the sizes the spec suggests, `crop` and `scale`, never upscaled.

Only a fixed set of sizes is ever made (the spec's plus a few configured): every request maps
onto one of them (`choose_spec`), so one image costs a bounded amount of CPU and disk however
many sizes clients ask for.

The pixel work is in `thumbnail_render`, imported on the first thumbnail only: Pillow costs
a server that never makes one a few MiB of memory. It is synchronous and CPU-bound: the
repository runs it on the thread pool. Only JPEG, PNG (APNG), GIF and WebP are decoded: fewer
decoders, fewer ways in for a hostile file. The pixel count is read from the header and checked
before any pixel is decoded, which is what keeps decompression bombs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from homeserver.config import THUMBNAIL_SIZE_RE

Method = Literal["crop", "scale"]

# The spec's recommended thumbnail sizes (Synapse's default list too).
STANDARD_SIZES: tuple[tuple[int, int, Method], ...] = (
    (32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale"))

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


def thumbnail_sizes(extra: list[str]) -> tuple[tuple[int, int, Method], ...]:
    """The only sizes ever made: the standard ones plus media.extra_thumbnail_sizes (validated)."""
    sizes = list(STANDARD_SIZES)
    for text in extra:
        match = THUMBNAIL_SIZE_RE.fullmatch(text)
        assert match is not None, text
        size = (int(match.group(1)), int(match.group(2)), cast(Method, match.group(3)))
        if size not in sizes:
            sizes.append(size)
    return tuple(sizes)


def choose_spec(width: int, height: int, method: Method, animated: bool,
                sizes: tuple[tuple[int, int, Method], ...] = STANDARD_SIZES) -> ThumbnailSpec:
    """The made size that serves a request: of the requested method, the smallest at least as
    large as asked, else the largest. So each image has at most len(sizes) thumbnails (twice
    that with animated ones) however many sizes are asked for; the spec lets the server answer
    with another size than requested."""
    of_method = [(w, h) for w, h, m in sizes if m == method]
    fits = [(w, h) for w, h in of_method if w >= width and h >= height]
    w, h = min(fits, key=_area) if fits else max(of_method, key=_area)
    return ThumbnailSpec(w, h, method, animated)


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


@dataclass(frozen=True)
class Thumbnail:
    content_type: str
    # The encoded thumbnail, or None when the original itself is the answer (it is no larger
    # than asked for and already in a format fit to show inline).
    data: bytes | None


def make_thumbnail(source: Path, spec: ThumbnailSpec, *, max_pixels: int, max_frames: int) -> Thumbnail:
    from media.thumbnail_render import render

    return render(source, spec, max_pixels=max_pixels, max_frames=max_frames)
